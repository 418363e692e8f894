"""Evaluate a run on a pair file: metrics overall and per group, optional JSON and plot."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from toolkit.common.atomic_io import write_json
from toolkit.scoring.metrics import evaluate_predictions
from toolkit.scoring.plots import plot_predictions
from toolkit.sources import SourceOptions, read_pairs

if TYPE_CHECKING:  # a bundle is scored without torch: import neither at run time
    from toolkit.scoring.onnx_bundle import Bundle
    from toolkit.training.run_dir import Run


def evaluate_file(run: Union["Run", "Bundle"], path: str | Path, options: SourceOptions, batch_size: int = 128,
                  json_path: Optional[str] = None, plot_path: Optional[str] = None) -> tuple[dict, list[str], str]:
    """(metrics, warnings, bad-row summary or "") of ``run`` (a run directory or an ONNX bundle) on
    the pairs in ``path``."""
    pairs, source = read_pairs(path, options, gold=True, score_range=run.score_range, purpose="to evaluate")
    pred = run.predictor(batch_size=batch_size).predict(pairs.s1, pairs.s2)
    metrics, warnings = evaluate_predictions(pred, pairs.scores, pairs.groups, ci=True)
    metrics["data"] = str(path)
    metrics["run"] = str(run.folder)
    if json_path:
        write_json(json_path, metrics)
    if plot_path:
        plot_predictions(plot_path, pred, pairs.scores, metrics, pairs.groups,
                         title=f"{run.folder.name} on {Path(path).name}", score_range=source.score_range)
    return metrics, warnings, source.report.summary() if source.report.bad else ""
