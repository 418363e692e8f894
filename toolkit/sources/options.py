"""How to read a pair file: which columns hold what, which format, what to do with bad rows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

FORMATS = ("auto", "csv", "tsv", "stsb", "jsonl", "parquet", "sqlite")
POLICIES = ("fail", "skip", "collect")


@dataclass
class Columns:
    """Column (or JSON field) names. ``id`` and ``group`` are optional."""

    s1: str = "sentence1"
    s2: str = "sentence2"
    score: str = "score"
    id: Optional[str] = None
    group: Optional[str] = None


@dataclass
class SourceOptions:
    """Everything a reader needs besides the path; shared by check, train, eval and score."""

    columns: Columns = field(default_factory=Columns)
    format: str = "auto"
    table: Optional[str] = None  # SQLite: read this table ...
    query: Optional[str] = None  # ... or the rows of this query
    quoting: str = "auto"  # CSV/TSV: "csv" (RFC 4180 quotes), "none" (quotes are text), auto
    score_range: Optional[tuple[float, float]] = None  # declared range; rows outside it are bad
    need_score: bool = True  # False when only predicting
    policy: str = "fail"  # fail: stop at the first bad row; skip: drop and count; collect: keep all
    limit: Optional[int] = None  # stop after this many good rows
    chunk_size: int = 8192
    keep_cols: tuple[str, ...] = ()  # extra columns carried through, as text (scoring output)
