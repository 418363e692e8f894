"""The PNGs people would rather look at: predicted vs gold, WiSE-FT curves, a search's trials, the spread
of gold and silver scores in a distillation."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolkit.common.atomic_io import atomic_path
from toolkit.scoring.metrics import HIGHER_IS_BETTER


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


def plot_score_spread(path: str | Path, sets: dict[str, np.ndarray],
                      score_range: Optional[tuple[float, float]] = None) -> None:
    """A histogram (share of each set per bin) of each named set of scores, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = {name: np.asarray(v, dtype=np.float64) for name, v in sets.items() if len(v)}
    lo, hi = score_range or (min(v.min() for v in present.values()), max(v.max() for v in present.values()))
    bins = np.linspace(lo, hi, 21)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, values in present.items():
        ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", lw=1.6,
                label=f"{name} (n={len(values)})")
    ax.set_xlabel("score")
    ax.set_ylabel("share of pairs")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_wise(path: str | Path, records: list[dict], metric: str, chosen: Optional[float], title: str = "",
              start_label: str = "zero-shot") -> None:
    """Left: in-distribution vs shifted metric along α, one line per shifted set, both ends and the
    chosen α marked. Right: every set's metric against α. Dashed: the output-space ensemble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if metric in ("spearman", "pearson") else 1.0
    sets = list(dict.fromkeys(r["set"] for r in records))
    roles = {r["set"]: r["role"] for r in records}
    id_sets = [s for s in sets if roles[s] == "id"] or [s for s in sets if roles[s] == "test"]
    ood_sets = [s for s in sets if roles[s] == "ood"]
    ensembled = any(r.get("mode") == "outputs" for r in records)
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.4), dpi=120)
    ax = axes[0]
    if id_sets and ood_sets:
        alphas, x = curve(records, id_sets[0], metric)
        for i, name in enumerate(ood_sets):
            color = f"C{i}"
            _, y = curve(records, name, metric)
            ax.plot(scale * x, scale * y, "-o", color=color, ms=3, lw=1.2, label=name)
            ax.scatter([scale * x[0]], [scale * y[0]], marker="s", s=60, color=color, zorder=3)
            ax.scatter([scale * x[-1]], [scale * y[-1]], marker="*", s=140, color=color, zorder=3)
            for a, xi, yi in zip(alphas, x, y):
                ax.annotate(f"{a:g}", (scale * xi, scale * yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if chosen is not None:
                k = int(np.argmin(np.abs(alphas - chosen)))
                ax.scatter([scale * x[k]], [scale * y[k]], s=180, facecolors="none", edgecolors="k", zorder=4)
            if ensembled:
                _, ex = curve(records, id_sets[0], metric, "outputs")
                _, ey = curve(records, name, metric, "outputs")
                ax.plot(scale * ex, scale * ey, "--", color=color, lw=1.0, label=f"{name}, output ensemble")
        ax.set_xlabel(f"{id_sets[0]} (in-distribution) {metric}")
        ax.set_ylabel(f"shifted {metric}")
        ax.set_title(f"square: α=0 ({start_label}), star: α=1 (fine-tuned)"
                     + (f", ring: chosen α={chosen:g}" if chosen is not None else ""), fontsize=9)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs an in-distribution and a shifted set", ha="center", va="center")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for i, name in enumerate(sets):
        alphas, y = curve(records, name, metric)
        ax.plot(alphas, scale * y, "-o", ms=3, color=f"C{i}", label=f"{name} ({roles[name]})")
        if ensembled:
            ea, ey = curve(records, name, metric, "outputs")
            ax.plot(ea, scale * ey, "--", color=f"C{i}", lw=1.0, label=f"{name}, output ensemble")
    if chosen is not None:
        ax.axvline(chosen, color="k", lw=0.8, ls="--")
    ax.set_xlabel("α  (0: " + start_label + ", 1: fine-tuned)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def curve(records: list[dict], name: str, metric: str = "spearman",
          mode: str = "weights") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, metric) of one set of a WiSE-FT sweep (weight space, or "outputs": the ensemble), in α order."""
    rows = sorted((r["alpha"], r.get(metric)) for r in records if r["set"] == name and r.get("mode", "weights") == mode)
    return np.array([a for a, _ in rows]), np.array([np.nan if v is None else v for _, v in rows])


def plot_search(path: Path, result: dict, metric: str) -> None:
    """A search's dev metric per trial (with the best so far) and against the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in result["trials"] if t["state"] == "COMPLETE"]
    scale = 100.0 if metric in ("spearman", "pearson") else 1.0
    better = max if HIGHER_IS_BETTER[metric] else min
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.4), dpi=120)
    x = [t["number"] for t in done]
    y = [scale * t["value"] for t in done]
    axes[0].plot(x, y, "o", ms=4, label="trial")
    axes[0].step(x, [better(y[:i + 1]) for i in range(len(y))], where="post", color="k", lw=1, label="best so far")
    axes[0].set_xlabel("trial")
    axes[0].set_ylabel(f"dev {metric}")
    axes[0].legend(fontsize=8)
    losses = sorted({t["setting"].get("loss", "") for t in done})
    for i, loss in enumerate(losses):
        pts = [(t["setting"]["lr"], scale * t["value"]) for t in done if t["setting"].get("loss", "") == loss]
        axes[1].scatter(*zip(*pts), s=18, color=f"C{i}", label=loss or "trials")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("learning rate")
    axes[1].set_ylabel(f"dev {metric}")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    summary = result["summary"]
    title = f"chosen: trial {result['chosen']['trial']}"
    if "test" in summary:
        title += f"; test {metric} over {len(result['final'])} seeds {scale * summary['test'][0]:.2f} ± " \
                 f"{scale * summary['test'][1]:.2f}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
