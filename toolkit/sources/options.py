"""How to read a pair file: which columns hold what, which format, what to do with bad rows.

These fields are options of every command that reads pairs (``--s1-col``, ``--score-range``, ...):
the comment after each is its help text, its type its parser."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional

from toolkit.common.choices import Format, Policy
from toolkit.common.option_types import SET_BY_COMMAND, Count, ScoreRange, check_options

DEFAULT_COLUMNS = {"s1_col": "sentence1", "s2_col": "sentence2", "score_col": "score"}


@dataclass
class Columns:
    """Column (or JSON field) names; the id and group columns are optional. A sentence or score column
    left unset is the model's (as it was trained), else the default: sentence1, sentence2, score."""

    s1_col: Optional[str] = None  # first sentence column (default: the model's, else sentence1)
    s2_col: Optional[str] = None  # second sentence column (default: the model's, else sentence2)
    score_col: Optional[str] = None  # gold score column (default: the model's, else score)
    id_col: Optional[str] = None  # pair id column (default: the row number)
    group_col: Optional[str] = None
    """column for per-group metrics (STS-B release: genre)"""

    def filled(self, trained: Optional[Mapping[str, Optional[str]]] = None) -> tuple["Columns", dict[str, str]]:
        """(every sentence and score column named, those of them taken from ``trained``): unset ones
        are the trained model's where it names them, else the defaults."""
        trained = trained or {}
        values, taken = {}, {}
        for name, default in DEFAULT_COLUMNS.items():
            value = getattr(self, name)
            if value is None and trained.get(name):
                value = taken[name] = str(trained[name])
            values[name] = default if value is None else value
        return dataclasses.replace(self, **values), taken


@dataclass
class SourceOptions:
    """Everything a reader needs besides the path; shared by check, train, eval, score and wise."""

    columns: Columns = field(default_factory=Columns)
    format: Format = "auto"
    """override the format the extension implies (a datasets save_to_disk folder is found by its state.json)"""
    table: Optional[str] = None  # SQLite: table to read
    query: Optional[str] = None  # SQLite: SELECT whose rows to read
    quoting: Literal["auto", "csv", "none"] = "auto"
    """CSV/TSV quotes: csv = RFC 4180, none = quotes are text (auto: none for the STS-B release)"""
    score_range: Optional[ScoreRange] = None  # declared score range; rows outside it are bad (STS-B release: 0:5)
    policy: Policy = "fail"
    """bad rows: fail = stop at the first; skip = drop, count and report them (also --skip-bad-rows)"""
    limit: Optional[Count] = None  # read at most this many good rows per file
    need_score: bool = field(default=True, metadata=SET_BY_COMMAND)  # False when only predicting
    chunk_size: Count = field(default=8192, metadata=SET_BY_COMMAND)  # records per read (ScoreConfig.chunk_size)
    keep_cols: tuple[str, ...] = field(default=(), metadata=SET_BY_COMMAND)  # carried through as text (ScoreConfig)

    def validate(self) -> None:
        check_options(self)
