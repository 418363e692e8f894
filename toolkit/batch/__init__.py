"""Scoring pair files of any size, exactly once and resumable: the streaming loop on one machine
(stream), its outputs and manifest protocol, and the same scoring on a Ray cluster (ray_engine)."""
