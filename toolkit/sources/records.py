"""The two shapes rows take: as a reader found them, and after validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Split:
    """Where a chunk starts, so that a reader can read that chunk alone (one Ray read task each):
    ``offset`` in bytes (text formats) or records (Parquet), the line number at that offset, and how
    many records come before it (the base of default ids)."""

    offset: int = 0
    line: int = 1
    row: int = 0


@dataclass
class RawChunk:
    """Consecutive records of one file, before any value is checked.

    ``locs`` is where each record starts (line for text formats, row for tables), ``rows`` its
    1-based ordinal among all records (so default ids stay stable when bad rows are skipped), and
    ``errors`` the records the reader itself could not parse, as (loc, row, message).
    """

    columns: dict[str, list[Any]] = field(default_factory=dict)
    locs: list[int] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    errors: list[tuple[int, int, str]] = field(default_factory=list)
    start: Split = Split()  # where the chunk starts (readers that can start there: ``Reader.splittable``)

    def __len__(self) -> int:
        return len(self.locs)

    @classmethod
    def empty(cls, needed: list[str], start: Split = Split()) -> "RawChunk":
        return cls(columns={c: [] for c in needed}, start=start)

    def add(self, values: list[Any], loc: int, row: int) -> None:
        """One record; ``values`` in the order of the chunk's columns."""
        for column, value in zip(self.columns.values(), values):
            column.append(value)
        self.locs.append(loc)
        self.rows.append(row)

    def add_error(self, loc: int, row: int, message: str) -> None:
        self.errors.append((loc, row, message))

    def add_record(self, loc: int, row: int, problem: Optional[str], record: Any, keys: Sequence[Any]) -> None:
        """A record as a reader met it: its problem, or else ``record[k]`` for each of ``keys`` (the
        chunk's columns, in order: field positions of a CSV row, names of a JSON object)."""
        if problem:
            self.add_error(loc, row, problem)
        else:
            self.add([record[k] for k in keys], loc, row)

    @property
    def size(self) -> int:
        """Records taken, parsed or not (what chunk sizes count)."""
        return len(self.locs) + len(self.errors)


@dataclass
class PairChunk:
    """Validated pairs, in file order."""

    ids: list[str]
    s1: list[str]
    s2: list[str]
    scores: Optional[np.ndarray]  # float64, None when scores were not asked for
    groups: Optional[list[str]]
    locs: list[int]
    extra: dict[str, list[str]] = field(default_factory=dict)  # the keep_cols, per row

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows) -> "PairChunk":
        """The pairs at ``rows`` (positions), in that order."""
        rows = [int(r) for r in rows]
        return PairChunk(
            ids=[self.ids[r] for r in rows], s1=[self.s1[r] for r in rows], s2=[self.s2[r] for r in rows],
            scores=None if self.scores is None else self.scores[np.asarray(rows, dtype=np.int64)],
            groups=None if self.groups is None else [self.groups[r] for r in rows],
            locs=[self.locs[r] for r in rows], extra={k: [v[r] for r in rows] for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(chunks: list["PairChunk"], with_scores: bool, with_groups: bool) -> "PairChunk":
        return PairChunk(
            ids=[i for c in chunks for i in c.ids],
            s1=[s for c in chunks for s in c.s1],
            s2=[s for c in chunks for s in c.s2],
            scores=np.concatenate([c.scores for c in chunks]) if with_scores and chunks else
            (np.zeros(0) if with_scores else None),
            groups=[g for c in chunks for g in c.groups] if with_groups else None,
            locs=[loc for c in chunks for loc in c.locs],
            extra={k: [v for c in chunks for v in c.extra[k]] for k in (chunks[0].extra if chunks else {})},
        )
