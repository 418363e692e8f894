"""Pair sources: CSV/TSV (and the STS-B release), JSONL, Parquet and SQLite behind one interface."""
from .options import Columns, SourceOptions
from .records import PairChunk
from .source import PairSource, PartPlan, SourceReport, detect_format, read_pairs
from .stsb import resolve_data_spec

__all__ = ["Columns", "PairChunk", "PairSource", "PartPlan", "SourceOptions", "SourceReport", "detect_format",
           "read_pairs", "resolve_data_spec"]
