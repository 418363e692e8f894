"""Pair files in, validated pairs out: CSV/TSV (and the STS-B release), JSONL, Parquet, SQLite and
`datasets` folders behind one interface (source), with `toolkit check` (check) and the STS-B genre-shift
splits (genre_shift)."""
from toolkit.sources.options import Columns, SourceOptions
from toolkit.sources.records import PairChunk
from toolkit.sources.source import PairSource, PartPlan, SourceReport, detect_format, read_pairs
from toolkit.sources.stsb import resolve_data_spec

__all__ = ["Columns", "PairChunk", "PairSource", "PartPlan", "SourceOptions", "SourceReport", "detect_format",
           "read_pairs", "resolve_data_spec"]
