"""Scoring pair files of any size, exactly once and resumable: the streaming loop on one machine
(stream), its settings and summary (config), the parts-and-manifest protocol that makes it exactly once
(manifest), the output formats (outputs), and the same scoring on a Ray cluster (ray_engine)."""
