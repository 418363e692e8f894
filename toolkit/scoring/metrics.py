"""Regression metrics for predicted vs gold scores, overall and per group.

Correlations are computed here (float64 numpy) and tested against scipy; undefined ones (constant
predictions or gold, fewer than two pairs) are None with a warning, never a silent NaN.
"""
from __future__ import annotations

import statistics
from typing import Optional, Sequence

import numpy as np

BOOTSTRAP_SAMPLES = 1000
HIGHER_IS_BETTER = {"spearman": True, "pearson": True, "mse": False, "rmse": False, "mae": False}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std of a figure over seeds (std 0 for one seed): how every published figure is summarised."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (as Spearman needs)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    if denom == 0 or not np.isfinite(denom):
        return None
    return float(np.clip((dx * dy).sum() / denom, -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    return pearson(average_ranks(x), average_ranks(y))


def bootstrap_spearman_ci(pred: np.ndarray, gold: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                          seed: int = 0) -> Optional[tuple[float, float]]:
    """Percentile 95% interval of Spearman over pairs resampled with replacement."""
    n = len(pred)
    if n < 3:
        return None
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        r = spearman(pred[idx], gold[idx])
        if r is not None:
            stats.append(r)
    if len(stats) < samples // 2:
        return None
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def regression_metrics(pred: Sequence[float], gold: Sequence[float], ci: bool = False) -> tuple[dict, list[str]]:
    """Metrics of one set of pairs, and warnings for anything undefined."""
    pred = np.asarray(pred, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if pred.shape != gold.shape:
        raise ValueError(f"{len(pred)} predictions for {len(gold)} gold scores")
    warnings: list[str] = []
    n = int(len(pred))
    if n == 0:
        return {"n": 0, "mse": None, "rmse": None, "mae": None, "pearson": None, "spearman": None}, \
            ["no pairs to evaluate"]
    err = pred - gold
    mse = float(np.mean(err * err))
    out = {"n": n, "mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err))),
           "pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    if out["pearson"] is None:
        if n < 2:
            why = "fewer than 2 pairs"
        elif np.all(pred == pred[0]):
            why = f"the predictions are constant ({pred[0]:g})"
        else:
            why = f"the gold scores are constant ({gold[0]:g})"
        warnings.append(f"{why}: Pearson and Spearman are undefined (null)")
    if ci:
        interval = bootstrap_spearman_ci(pred, gold) if out["spearman"] is not None else None
        out["spearman_ci95"] = list(interval) if interval else None
    return out, warnings


def evaluate_predictions(pred: Sequence[float], gold: Sequence[float],
                         groups: Optional[Sequence[str]] = None, ci: bool = True) -> tuple[dict, list[str]]:
    """Overall metrics (with a bootstrap interval for Spearman) plus one row per group."""
    result, warnings = regression_metrics(pred, gold, ci=ci)
    if groups is not None:
        pred, gold, groups = np.asarray(pred), np.asarray(gold), np.asarray(groups)
        result["groups"] = {}
        for g in sorted(set(groups.tolist())):
            mask = groups == g
            row, row_warnings = regression_metrics(pred[mask], gold[mask], ci=ci)
            result["groups"][g] = row
            warnings.extend(f"group {g!r}: {w}" for w in row_warnings)
    return result, warnings


def is_better(metric: str, new: Optional[float], best: Optional[float]) -> bool:
    if new is None:
        return False
    if best is None:
        return True
    return new > best if HIGHER_IS_BETTER[metric] else new < best


def format_metrics(m: dict) -> str:
    def f(v, pct=False):
        if v is None:
            return "n/a"
        return f"{100 * v:.2f}" if pct else f"{v:.4f}"
    text = (f"n={m['n']} spearman={f(m['spearman'], True)} pearson={f(m['pearson'], True)} "
            f"mse={f(m['mse'])} rmse={f(m['rmse'])} mae={f(m['mae'])}")
    if m.get("spearman_ci95"):
        lo, hi = m["spearman_ci95"]
        text += f" spearman95%=[{100 * lo:.2f}, {100 * hi:.2f}]"
    return text
