"""Validate a pair file without training: rows, every problem, and a look at the scores."""
from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.common.errors import escape, show_path
from toolkit.sources import PairSource, SourceOptions


@dataclass
class CheckResult:
    path: str
    layout: str
    rows: int  # records read
    good: int
    problems: list[str]
    problem_count: int
    score_range: Optional[tuple[float, float]]
    score_stats: Optional[dict] = None
    groups: dict = field(default_factory=dict)
    duplicate_ids: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def lines(self) -> list[str]:
        out = list(self.problems)
        if self.problem_count > len(self.problems):
            out.append(f"... and {self.problem_count - len(self.problems)} more problems")
        out.append(f"{show_path(self.path)}: {self.layout}; {self.rows} rows, {self.good} good, "
                   f"{self.problem_count} with problems")
        if self.score_stats:
            s = self.score_stats
            declared = f" (declared range {self.score_range[0]:g}..{self.score_range[1]:g})" if self.score_range else ""
            out.append(f"  scores: min {s['min']:g}, max {s['max']:g}, mean {s['mean']:.3f}, "
                       f"std {s['std']:.3f}{declared}")
        if self.groups:
            out.append("  groups: " + ", ".join(f"{escape(g)} {n}" for g, n in sorted(self.groups.items())))
        if self.duplicate_ids:
            out.append(f"  warning: {self.duplicate_ids} duplicate ids")
        return out


def check_file(path: str | Path, options: SourceOptions) -> CheckResult:
    options = dataclasses.replace(options, policy="collect")
    source = PairSource(path, options)
    scores, groups, ids = [], Counter(), Counter()
    for chunk in source.chunks():
        if chunk.scores is not None:
            scores.append(chunk.scores)
        if chunk.groups is not None:
            groups.update(chunk.groups)
        if source.columns.id_col is not None:
            ids.update(chunk.ids)
    stats = None
    if scores and sum(len(s) for s in scores):
        s = np.concatenate(scores)
        stats = {"min": float(s.min()), "max": float(s.max()), "mean": float(s.mean()), "std": float(s.std())}
    report = source.report
    return CheckResult(path=str(path), layout=source.description, rows=report.rows, good=report.good,
                       problems=list(report.problems), problem_count=report.bad, score_range=source.score_range,
                       score_stats=stats, groups=dict(groups),
                       duplicate_ids=sum(n - 1 for n in ids.values() if n > 1))
