"""The export's gate: the bundle against PyTorch on the run's own dev pairs (or --verify-data) before
anything is written; refused beyond the limit (fp32: largest score difference; fp16/int8: Spearman
drop). The bundle also carries a sample of those pairs (gate.json) to be gated again where it is
served (scoring.runtimes)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit.common.errors import ToolkitError
from toolkit.scoring.metrics import evaluate_predictions
from toolkit.scoring.onnx_bundle import Bundle
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.run_data import recorded_data, recorded_dev
from toolkit.training.run_dir import CONFIG

if TYPE_CHECKING:
    from toolkit.artifacts.onnx_export import ExportConfig, Source


GATE_PAIRS = 2000  # pairs the bundle carries (gate.json) to be gated again on the engine that serves it


def verify_pairs(source: Source, cfg: ExportConfig):
    """(path, pairs) the gate compares on: the run's own dev pairs, read as training read them (its
    columns, format, table, quoting; a held-out share drawn again), or --verify-data's file read
    with the run's columns."""
    where = str(source.folder / CONFIG)
    if cfg.verify_data:
        options = recorded_data(source.config, where).source if isinstance(source.config.get("data"), dict) \
            else SourceOptions()
        options = dataclasses.replace(options, policy="skip", limit=None, table=None, query=None)
        path = cfg.verify_data
        pairs, _ = read_pairs(path, options, gold=True,
                              score_range=source.config.get("resolved", {}).get("score_range"))
    else:
        _, path, pairs = recorded_dev(source.config, where, "--verify-data FILE")
    if len(pairs) < 8:
        raise ToolkitError(f"{path}: fewer than 8 usable pairs to verify the export on")
    return path, pairs


class GateRefused(ToolkitError):
    """The bundle drifts from PyTorch beyond the gate's limit."""


def gate(source: Source, bundle: Bundle, cfg: ExportConfig, path: str, pairs, reference: dict) -> dict:
    """Compare the bundle with PyTorch on ``pairs`` (from ``path``); raise if it drifts. Returns the figures.
    ``reference``: PyTorch's scores by pair index, filled here and reused (a second gate, the gate pairs)."""
    if cfg.variant == "fp32":
        idx = np.random.default_rng(0).permutation(len(pairs))[:cfg.verify_pairs]
        s1, s2 = [pairs.s1[i] for i in idx], [pairs.s2[i] for i in idx]
        diff = float(np.max(np.abs(bundle.predict(s1, s2) - torch_scores(source, pairs, idx, reference))))
        figures = {"variant": "fp32", "data": Path(path).name, "pairs": len(idx), "max_abs_diff": diff,
                   "limit": cfg.max_abs_diff}
        if not diff <= cfg.max_abs_diff:
            raise GateRefused(f"export refused: ONNX Runtime differs from PyTorch by up to {diff:.2e} on the score "
                               f"scale over {len(idx)} pairs of {path} (limit {cfg.max_abs_diff:g})")
        return figures
    ours = bundle.predict(pairs.s1, pairs.s2)
    ref = torch_scores(source, pairs, np.arange(len(pairs)), reference)
    m_ours, _ = evaluate_predictions(ours, pairs.scores, ci=False)
    m_ref, _ = evaluate_predictions(ref, pairs.scores, ci=False)
    drop = 100 * (m_ref["spearman"] - m_ours["spearman"])
    figures = {"variant": cfg.variant, "data": Path(path).name, "pairs": len(pairs),
               "spearman_pytorch": 100 * m_ref["spearman"], "spearman_onnx": 100 * m_ours["spearman"],
               "spearman_drop": drop, "max_abs_diff": float(np.max(np.abs(ours - ref))),
               "limit_spearman_drop": cfg.max_spearman_drop}
    if not drop <= cfg.max_spearman_drop:
        raise GateRefused(f"export refused: {cfg.variant} loses {drop:.2f} Spearman points against PyTorch on {path} "
                           f"({100 * m_ref['spearman']:.2f} -> {100 * m_ours['spearman']:.2f}; limit "
                           f"{cfg.max_spearman_drop:g})")
    return figures


def torch_scores(source: Source, pairs, idx: np.ndarray, reference: dict) -> np.ndarray:
    """PyTorch's scores of ``pairs[idx]``, each pair computed once per export."""
    todo = [int(i) for i in idx if int(i) not in reference]
    if todo:
        reference.update(zip(todo, source.torch_predict([pairs.s1[i] for i in todo], [pairs.s2[i] for i in todo])))
    return np.array([reference[int(i)] for i in idx], dtype=np.float64)


def gate_pairs(source: Source, cfg: ExportConfig, path: str, pairs, reference: dict) -> dict:
    """What the bundle carries to be gated again where it is served, on other engines and precisions
    (``runtimes``): a seeded sample of the gate's pairs with their gold and PyTorch's scores."""
    idx = np.sort(np.random.default_rng(0).permutation(len(pairs))[:GATE_PAIRS])
    return {"data": Path(path).name, "pairs": len(idx), "s1": [pairs.s1[i] for i in idx],
            "s2": [pairs.s2[i] for i in idx], "gold": [float(pairs.scores[i]) for i in idx],
            "reference": torch_scores(source, pairs, idx, reference).tolist(),
            "limit_spearman_drop": cfg.max_spearman_drop}


def verdict(f: dict) -> str:
    """The gate's figures as a sentence."""
    where = f"on {f['provider']}, {f['pairs']} pairs of {f['data']}"
    if f["variant"] == "fp32":
        return f"verified {where}: ONNX Runtime within {f['max_abs_diff']:.1e} of PyTorch (limit {f['limit']:g})"
    return (f"verified {where}: Spearman {f['spearman_onnx']:.2f} ({f['variant']}) vs {f['spearman_pytorch']:.2f} "
            f"(PyTorch), a drop of {f['spearman_drop']:.2f} points (limit {f['limit_spearman_drop']:g}); largest "
            f"score difference {f['max_abs_diff']:.3f}")
