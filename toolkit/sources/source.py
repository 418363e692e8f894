"""One interface over every pair format: validated pairs in chunks, bad rows per policy."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from toolkit.common.choices import FORMATS
from toolkit.common.errors import BadInputError, show, show_names, show_path
from toolkit.sources.base import Reader
from toolkit.sources.delimited import DelimitedReader
from toolkit.sources.hf_dataset import HFDatasetReader, is_dataset_folder
from toolkit.sources.jsonl import JsonlReader
from toolkit.sources.options import Columns, SourceOptions
from toolkit.sources.parquet import ParquetReader
from toolkit.sources.records import PairChunk, RawChunk, Split
from toolkit.sources.sqlite import SqliteReader
from toolkit.sources.validate import label_problem, parse_score, text_problem

EXTENSIONS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
    ".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite",
}
STSB_SCORE_RANGE = (0.0, 5.0)
EXAMPLES_KEPT = {"fail": 1, "skip": 5, "collect": 10_000}


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt not in FORMATS:
        raise BadInputError(f"unknown format {show(fmt, 30)} (formats: {', '.join(FORMATS[1:])})")
    if fmt != "auto":
        return fmt
    if is_dataset_folder(path):
        return "datasets"
    found = EXTENSIONS.get(path.suffix.lower())
    if found is None:
        raise BadInputError(
            f"{show_path(path)}: cannot tell the format from the extension {show(path.suffix or '(none)', 30)}; "
            f"pass --format {'|'.join(FORMATS[1:])}")
    return found


def make_reader(path: Path, options: SourceOptions) -> Reader:
    fmt = detect_format(path, options.format)
    if fmt in ("csv", "tsv", "stsb"):
        return DelimitedReader(path, options, fmt)
    if fmt == "jsonl":
        return JsonlReader(path, options)
    if fmt == "parquet":
        return ParquetReader(path, options)
    if fmt == "datasets":
        return HFDatasetReader(path, options)
    return SqliteReader(path, options)


@dataclass
class SourceReport:
    """What reading a file found: rows seen, rows kept, and the problems (some or all)."""

    path: str
    rows: int = 0
    good: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.bad:
            return f"{self.path}: {self.good} rows"
        shown = "; ".join(self.problems[:3])
        return (f"{self.path}: skipped {self.bad} bad row{'s' if self.bad != 1 else ''} of {self.rows}, "
                f"kept {self.good}; first: {shown}")


@dataclass(frozen=True)
class PartPlan:
    """One chunk as a whole-file read found it: where it starts, its records (good or bad), its good rows."""

    start: Split
    records: int
    good: int


class PairSource:
    """Validated pairs from one file, streamed in chunks (read it once).

    A recognised layout brings its defaults: the STS-B release groups by genre and declares the
    0..5 score range, unless the options say otherwise.
    """

    def __init__(self, path: str | Path, options: Optional[SourceOptions] = None):
        options = options or SourceOptions()
        options.validate()
        self.path = Path(path)
        options = dataclasses.replace(options, columns=options.columns.filled()[0])
        self.options = options
        self.reader = make_reader(self.path, options)
        cols = dataclasses.replace(options.columns)
        self.score_range = options.score_range
        if self.reader.layout == "stsb":
            cols.group_col = cols.group_col or "genre"
            self.score_range = self.score_range or STSB_SCORE_RANGE
        if self.score_range is not None and not self.score_range[0] < self.score_range[1]:
            raise BadInputError(f"score range {self.score_range} is empty: give LOW:HIGH with LOW < HIGH")
        self.columns: Columns = cols
        self.needed = [cols.s1_col, cols.s2_col]
        for name in (cols.score_col if options.need_score else None, cols.id_col, cols.group_col, *options.keep_cols):
            if name is not None and name not in self.needed:
                self.needed.append(name)
        names = self.reader.names
        if names is not None:
            for name in self.needed:
                if name not in names:
                    if isinstance(self.reader, DelimitedReader):
                        raise self.reader.missing_column_error(name)
                    raise self.reader.fail(f"no column {show(name, 40)} (columns: {show_names(names)})")
        self.report = SourceReport(str(self.path))
        self.plan: list[PartPlan] = []  # filled as chunks() reads: what read_part reads again
        self._used = False

    @property
    def description(self) -> str:
        return self.reader.description

    @property
    def has_groups(self) -> bool:
        return self.columns.group_col is not None

    def chunks(self, keep_empty: bool = False) -> Iterator[PairChunk]:
        """Validated chunks in file order. ``keep_empty``: also chunks whose rows were all bad, so
        that the n-th chunk is the n-th slice of the file (scoring's parts and shards)."""
        if self._used:
            raise RuntimeError("a PairSource is read once; open the file again")
        self._used = True
        limit = self.options.limit
        for raw in self.reader.raw_chunks(self.needed, self.options.chunk_size):
            remaining = None if limit is None else limit - self.report.good
            chunk = self._validate(raw, remaining)
            self.report.good += len(chunk)
            self.plan.append(PartPlan(raw.start, raw.size, len(chunk)))
            if len(chunk) or keep_empty:
                yield chunk
            if limit is not None and self.report.good >= limit:
                return

    def read_part(self, part: PartPlan) -> PairChunk:
        """The good rows of one chunk of an earlier whole-file read's plan, read alone (a splittable
        reader starts at its offset): one Ray read task's share of a file. Bad rows were counted and
        reported by that earlier read."""
        if not self.reader.splittable:
            raise ValueError(f"{self.reader.description} files are read whole")
        raws = self.reader.raw_chunks(self.needed, part.records, part.start)
        try:
            raw = next(raws)
        finally:
            raws.close()
        return self._validate(raw, part.good)

    def read_all(self) -> PairChunk:
        chunks = list(self.chunks())
        return PairChunk.concat(chunks, self.options.need_score, self.has_groups)

    def _validate(self, raw: RawChunk, remaining: Optional[int] = None) -> PairChunk:
        """Good rows of ``raw`` (at most ``remaining``); bad ones go to the policy, in file order."""
        cols, opts = self.columns, self.options
        ids, s1, s2, scores, groups, locs = [], [], [], [], [], []
        problems: list[tuple[int, str]] = []
        c1, c2 = raw.columns[cols.s1_col], raw.columns[cols.s2_col]
        cs = raw.columns[cols.score_col] if opts.need_score else None
        ci = raw.columns[cols.id_col] if cols.id_col else None
        cg = raw.columns[cols.group_col] if cols.group_col else None
        extra: dict[str, list[str]] = {name: [] for name in opts.keep_cols}
        end = None  # the location where the limit was reached: nothing after it counts
        for k, loc in enumerate(raw.locs):
            if remaining is not None and len(ids) >= remaining:
                end = loc
                break
            problem = text_problem(c1[k], cols.s1_col) or text_problem(c2[k], cols.s2_col)
            score = 0.0
            if problem is None and cs is not None:
                score, problem = parse_score(cs[k], cols.score_col, self.score_range)
            ident = str(raw.rows[k])
            if problem is None and ci is not None:
                ident, problem = label_problem(ci[k], cols.id_col)
            group = ""
            if problem is None and cg is not None:
                group, problem = label_problem(cg[k], cols.group_col)
            if problem is not None:
                problems.append((loc, problem))
                continue
            ids.append(ident)
            s1.append(c1[k])
            s2.append(c2[k])
            scores.append(score)
            groups.append(group)
            locs.append(loc)
            for name in opts.keep_cols:
                value = raw.columns[name][k]
                extra[name].append("" if value is None else str(value))
        errors = [(loc, msg) for loc, _, msg in raw.errors if end is None or loc < end]
        problems.extend(errors)
        self.report.rows += (len(raw.locs) if end is None else raw.locs.index(end)) + len(errors)
        if problems:
            self._handle(sorted(problems))
        return PairChunk(ids=ids, s1=s1, s2=s2,
                         scores=np.asarray(scores, dtype=np.float64) if cs is not None else None,
                         groups=groups if cg is not None else None, locs=locs, extra=extra)

    def _handle(self, problems: list[tuple[int, str]]) -> None:
        policy = self.options.policy
        if policy == "fail":
            loc, msg = problems[0]
            raise BadInputError(f"{self.reader.where(loc)}: {msg}")
        self.report.bad += len(problems)
        room = EXAMPLES_KEPT[policy] - len(self.report.problems)
        self.report.problems.extend(f"{self.reader.where(loc)}: {msg}" for loc, msg in problems[:max(room, 0)])


def read_pairs(path: str | Path, options: Optional[SourceOptions] = None, *, gold: bool = False,
               score_range: Optional[tuple[float, float]] = None,
               purpose: Optional[str] = None) -> tuple[PairChunk, PairSource]:
    """All validated pairs of a file: the one reader of sets that fit in memory (training, dev,
    evaluation, WiSE-FT's sets, the export gate). ``gold``: every pair needs a score, inside
    ``score_range`` (the model's: gold outside it means a mismatch) unless the options name one.
    ``purpose`` ("to evaluate"): a file with no usable pair is then an error that says what for."""
    options = dataclasses.replace(options or SourceOptions())
    options.need_score = options.need_score or gold
    if gold and options.score_range is None and score_range is not None:
        options.score_range = (float(score_range[0]), float(score_range[1]))
    source = PairSource(path, options)
    pairs = source.read_all()
    if purpose is not None and len(pairs) == 0:
        raise BadInputError(f"{show_path(path)}: no usable pairs {purpose}")
    return pairs, source
