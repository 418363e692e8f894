"""Predicted vs gold, as a PNG people can look at."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .io_utils import atomic_path


def plot_predictions(path: str | Path, pred: Sequence[float], gold: Sequence[float], metrics: dict,
                     groups: Optional[Sequence[str]] = None, title: str = "",
                     score_range: Optional[tuple[float, float]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred, gold = np.asarray(pred), np.asarray(gold)
    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=120)
    if groups is None:
        ax.scatter(gold, pred, s=6, alpha=0.4, color="tab:blue", linewidths=0)
    else:
        groups = np.asarray(groups)
        for g in sorted(set(groups.tolist())):
            mask = groups == g
            ax.scatter(gold[mask], pred[mask], s=6, alpha=0.45, linewidths=0, label=f"{g} (n={mask.sum()})")
        ax.legend(loc="upper left", fontsize=8, markerscale=2)
    lo, hi = score_range or (float(min(gold.min(), pred.min())), float(max(gold.max(), pred.max())))
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, ls="--")
    ax.set_xlabel("gold score")
    ax.set_ylabel("predicted score")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"
    ax.set_title(f"{title}\nSpearman {pct(metrics.get('spearman'))}  Pearson {pct(metrics.get('pearson'))}  "
                 f"RMSE {metrics['rmse']:.3f}  n={metrics['n']}", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
