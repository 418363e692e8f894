"""Pair files in, validated pairs out: CSV/TSV and the STS-B release (delimited, stsb), JSONL,
Parquet, SQLite and `datasets` folders, each a reader (base) behind one interface (source) that
validates rows (validate) and applies the bad-row policy, and `toolkit check` (check)."""
from toolkit.sources.options import Columns, SourceOptions
from toolkit.sources.records import PairChunk
from toolkit.sources.source import PairSource, PartPlan, SourceReport, detect_format, read_pairs
from toolkit.sources.stsb import resolve_data_spec

__all__ = ["Columns", "PairChunk", "PairSource", "PartPlan", "SourceOptions", "SourceReport", "detect_format",
           "read_pairs", "resolve_data_spec"]
