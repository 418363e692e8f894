"""A run's data: which files it trains and selects on, how they are read, and the held-out dev split.

Every command that reads a run's own data (training, resume, search's trials, export's gate, WiSE-FT's
in-distribution set) reads it here, from the ``DataConfig`` the run recorded: the same columns,
format, table and quoting, and the same dev pairs. With one file and no dev file, a seeded share of
its pairs is held out as dev, so that no command ever selects on the pairs it trained on. Paths are
recorded absolute, so that a run's later commands work from any folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional

import numpy as np

from toolkit.common.config_io import from_dict
from toolkit.common.errors import ToolkitError, show_path
from toolkit.common.option_types import Bounds, check_options
from toolkit.sources import PairChunk, PairSource, SourceOptions, read_pairs
from toolkit.sources.options import DEFAULT_COLUMNS

Say = Callable[[str], None]


@dataclass
class DataConfig:
    """The training and dev files and how to read them; saved in the run directory."""

    train: Optional[str] = None  # training pair file
    dev: Optional[str] = None
    """dev pair file (model selection, early stopping); default: a share of --train held out (--dev-fraction)"""
    source: SourceOptions = field(default_factory=SourceOptions)
    dev_table: Optional[str] = None  # SQLite: table for the dev split (--table applies to --train)
    dev_query: Optional[str] = None  # SQLite: query for the dev split
    dev_fraction: Annotated[float, Bounds(0, 1, low_open=True)] = 0.1
    """with no --dev: the share of --train's pairs held out as dev (identical pairs stay on one side)"""
    split_seed: int = 42  # with no --dev: the seed that draws the held-out pairs

    @property
    def held_out(self) -> bool:
        return self.dev is None

    def dev_options(self) -> SourceOptions:
        opts = dataclasses.replace(self.source)
        if self.dev_table or self.dev_query:
            opts.table, opts.query = self.dev_table, self.dev_query
        return opts

    def validate(self) -> None:
        check_options(self)
        if not self.train:
            raise ToolkitError("name the data: --data FILE (a dev share is held out), --data stsb:FOLDER, or "
                               "--train FILE [--dev FILE]")
        if self.dev is not None and _same_file(self.train, self.dev) and \
                (self.dev_table, self.dev_query) in ((None, None), (self.source.table, self.source.query)):
            raise ToolkitError(f"--train and --dev name the same pairs ({show_path(Path(self.dev))}): training would "
                               "select on its own training pairs; drop --dev to hold out a share (--dev-fraction)")

    def absolute(self) -> "DataConfig":
        """The same data with absolute paths: what a run records."""
        resolve = lambda p: None if p is None else str(Path(p).expanduser().resolve())  # noqa: E731
        return dataclasses.replace(self, train=resolve(self.train), dev=resolve(self.dev))


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.samefile(pb)
    return pa.resolve() == pb.resolve()


@dataclass
class RunData:
    """A run's training and dev pairs as read; ``train_source`` knows the score range and columns found."""

    train: PairChunk
    dev: PairChunk
    train_source: PairSource
    config: DataConfig

    def describe(self) -> str:
        counts = f"{len(self.train)} train / {len(self.dev)} dev pairs"
        if self.config.held_out:
            return f"{counts}, held out from {Path(self.config.train).name}, seed {self.config.split_seed}"
        return counts


def held_out_split(pairs: PairChunk, fraction: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, dev rows), each in file order: a seeded draw of whole groups of identical pairs
    (the same two sentences, in either order), so that no pair is both trained and selected on."""
    keys: dict[tuple[str, str], int] = {}
    group = np.fromiter((keys.setdefault(tuple(sorted((a, b))), len(keys)) for a, b in zip(pairs.s1, pairs.s2)),
                        dtype=np.int64, count=len(pairs))
    if len(keys) < 2:
        raise ToolkitError(f"{where}: {len(pairs)} pairs ({len(keys)} distinct): too few to hold out a dev share; "
                           "pass a dev file with --dev")
    sizes = np.bincount(group, minlength=len(keys))
    order = np.random.default_rng(seed).permutation(len(keys))
    target = fraction * len(pairs)
    taken = np.cumsum(sizes[order])
    n_groups = int(np.searchsorted(taken, target, side="left")) + 1  # the first groups reaching the target
    n_groups = min(max(n_groups, 1), len(keys) - 1)  # both sides keep at least one group
    is_dev = np.zeros(len(keys), dtype=bool)
    is_dev[order[:n_groups]] = True
    dev_rows = is_dev[group]
    return np.flatnonzero(~dev_rows), np.flatnonzero(dev_rows)


def dev_digest(pairs: PairChunk) -> str:
    """A fingerprint of the dev pairs: a later command re-reading them knows they are the same."""
    h = hashlib.sha256()
    for row in zip(pairs.ids, pairs.s1, pairs.s2, (repr(float(s)) for s in pairs.scores)):
        for value in row:
            h.update(value.encode("utf-8", "surrogatepass") + b"\x00")
    return h.hexdigest()


def _report(source: PairSource, say: Optional[Say]) -> None:
    if source.report.bad and say is not None:
        say(source.report.summary())


def read_run_data(data: DataConfig, say: Optional[Say] = None) -> RunData:
    """The training and dev pairs of ``data``: the dev file's, or the held-out share of the training file."""
    train_pairs, train_src = read_pairs(data.train, data.source, gold=True, purpose="to train on")
    _report(train_src, say)
    if data.held_out:
        train_rows, dev_rows = held_out_split(train_pairs, data.dev_fraction, data.split_seed,
                                              show_path(Path(data.train)))
        return RunData(train_pairs.take(train_rows), train_pairs.take(dev_rows), train_src, data)
    dev_pairs = _read_dev_file(data, train_src.score_range, say)
    return RunData(train_pairs, dev_pairs, train_src, data)


def _read_dev_file(data: DataConfig, score_range, say: Optional[Say]) -> PairChunk:
    options = data.dev_options()
    options.score_range = options.score_range or score_range  # dev gold in the trained range
    pairs, source = read_pairs(data.dev, options, gold=True, purpose="to evaluate on (dev)")
    _report(source, say)
    return pairs


def recorded_data(config: dict, where: str) -> DataConfig:
    """The ``DataConfig`` a run (or a merged folder, or a WiSE-FT run) recorded in its config."""
    if not isinstance(config.get("data"), dict):
        raise ToolkitError(f"{where}: records no training data (a run of another version?)")
    return from_dict(DataConfig, config["data"], where)


def trained_columns(config: dict) -> dict[str, str]:
    """The sentence and score columns a run's training named ({} for the defaults): what commands
    reading a new file assume when the user names none."""
    columns = (((config.get("data") or {}).get("source") or {}).get("columns")) or {}
    return {k: str(columns[k]) for k in DEFAULT_COLUMNS if columns.get(k)}


def recorded_dev(config: dict, where: str, instead: str) -> tuple[str, str, PairChunk]:
    """(name, path, pairs) of the dev pairs a run was selected on, read as it read them. ``instead``
    names the flag that reads another file when they cannot be read again."""
    data = recorded_data(config, where)
    path = data.train if data.held_out else data.dev
    what = "training file (its dev share was held out from it)" if data.held_out else "dev file"
    if not path or not Path(path).exists():
        hint = "" if not path or Path(path).is_absolute() else " (recorded relative to the folder training ran in)"
        raise ToolkitError(f"{where}: the run's {what} {show_path(Path(path or '(not recorded)'))} is not "
                           f"there{hint}: pass {instead}")
    if data.held_out:
        pairs = read_run_data(data).dev
        name = f"{Path(path).stem}-dev"
    else:
        pairs = _read_dev_file(data, (config.get("resolved") or {}).get("score_range"), None)
        name = Path(path).stem
    recorded = (config.get("resolved") or {}).get("dev_digest")
    if recorded is not None and dev_digest(pairs) != recorded:
        raise ToolkitError(f"{where}: the run's {what} {show_path(Path(path))} has changed since training (its dev "
                           f"pairs are not the ones the run was selected on): pass {instead}")
    return name, path, pairs
