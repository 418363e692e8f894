"""The run directory: everything later commands need, so the base model is never passed twice.

    config.json        resolved model/train/data config, label scale, base-model reference
    adapter/           adapter (+ head) in the adapters library's format, safetensors
                       (full fine-tuning: adapter/model.safetensors, every weight)
    init/              the trainable weights as training started (adapter at identity, linear-probe
                       head), safetensors: the α = 0 end of ``toolkit wise``
    metrics.json       best dev metrics, per-epoch history, parameter counts, time
    train_log.jsonl    one line per epoch; train.log the same for people
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from toolkit import __version__
from toolkit.common.atomic_io import read_json, write_json
from toolkit.common.config_io import from_dict
from toolkit.common.errors import ToolkitError
from toolkit.model.batching import PairTokenizer
from toolkit.model.label_scale import LabelScale
from toolkit.model.config import ModelConfig
from toolkit.model.regressor import PairRegressor
from toolkit.model.safe_loading import caller_trust, load_tokenizer, resolve_model, weights_sha256
from toolkit.scoring.torch_engine import Predictor

CONFIG = "config.json"
WEIGHTS_DIR = "adapter"
INIT_DIR = "init"  # trainable weights as training started: WiSE-FT's α = 0 end
INIT_WEIGHTS = "params.safetensors"
METRICS = "metrics.json"


def base_reference(cfg: ModelConfig) -> dict:
    name, folder = resolve_model(cfg.base_model)
    return {"name": name, "path": str(folder), "weights_sha256": weights_sha256(folder)}


def write_config(folder: Path, model_cfg: ModelConfig, labels: LabelScale, base: dict, **sections) -> None:
    config = {"toolkit_version": __version__, "base_model": base, "model": dataclasses.asdict(model_cfg),
              "labels": labels.to_dict(), **sections}
    write_json(folder / CONFIG, config)


@dataclass
class Run:
    """A trained run, loaded: model (eval mode), tokenizer, label scale and its saved config. A merged
    folder loads as one too, its model a ``merge.MergedRegressor`` (the same calls)."""

    folder: Path
    config: dict
    model: PairRegressor
    tokens: PairTokenizer
    labels: LabelScale

    def predictor(self, batch_size: int = 128, device: Optional[str] = None) -> Predictor:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device)
        return Predictor(self.model, self.tokens, self.labels, batch_size=batch_size, device=device)

    @property
    def score_range(self) -> Optional[tuple[float, float]]:
        rng = self.config.get("resolved", {}).get("score_range")
        return tuple(rng) if rng else None


def read_run_config(folder: Path, trust_remote_code: bool) -> tuple[dict, ModelConfig]:
    """The run's config.json and its model config; code execution only if the caller allows it,
    never because the run's own config asks."""
    if not (folder / CONFIG).is_file():
        raise ToolkitError(f"{folder}: not a run directory (no {CONFIG}); train one with `toolkit train`")
    config = read_json(folder / CONFIG)
    try:
        model_cfg = from_dict(ModelConfig, config["model"], str(folder / CONFIG))
    except (KeyError, TypeError, ToolkitError) as e:
        raise ToolkitError(f"{folder / CONFIG}: incomplete or from another version ({e})") from None
    model_cfg.trust_remote_code = caller_trust(folder / CONFIG, config["model"], trust_remote_code)
    return config, model_cfg


def load_run(folder: str | Path, trust_remote_code: bool = False, fused_kernel: str = "auto") -> Run:
    """``fused_kernel`` is chosen where the run is used, not where it was trained: the weights are the
    same. ``trust_remote_code`` too: the run's own config can never turn it on."""
    folder = Path(folder)
    config, model_cfg = read_run_config(folder, trust_remote_code)
    try:
        labels = LabelScale.from_dict(config["labels"])
        base = config["base_model"]
    except (KeyError, TypeError, ToolkitError) as e:
        raise ToolkitError(f"{folder / CONFIG}: incomplete or from another version ({e})") from None
    model_cfg.fused_kernel = fused_kernel
    _, base_folder = resolve_model(base["name"])
    digest = weights_sha256(base_folder)
    if digest != base["weights_sha256"]:
        raise ToolkitError(f"{folder}: the base model at {base_folder} is not the one this run was trained on "
                           f"(weights sha256 {digest[:12]} != {base['weights_sha256'][:12]})")
    model = PairRegressor.create(model_cfg, base_folder, weights=folder / WEIGHTS_DIR)
    tokens = PairTokenizer(load_tokenizer(base_folder, model_cfg.trust_remote_code), model_cfg.arch,
                           model_cfg.max_length)
    return Run(folder, config, model, tokens, labels)
