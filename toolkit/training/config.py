"""How to train (``TrainConfig``), what training returns, and the checks that tie the loss, the
architecture and the label scale together before anything is built."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np

from toolkit.common.choices import RANK_LOSSES, Loss, Metric
from toolkit.common.option_types import Bounds, Count, Positive, Share, check_options
from toolkit.common.errors import ToolkitError
from toolkit.model.adapter_kinds import adapter_kind
from toolkit.model.architectures import architecture
from toolkit.model.label_scale import LabelScale
from toolkit.model.config import ModelConfig
from toolkit.training.run_data import DataConfig


@dataclass
class TrainConfig:
    """How to train; saved in the run directory (a rerun with other settings is refused)."""

    epochs: Count = 4  # passes over the training file
    batch_size: Count = 16  # pairs per device and step
    global_batch_size: Optional[Count] = None
    """effective batch; per device = this / (processes x accumulation), which must divide it"""
    grad_accum: Count = 1  # gradient accumulation steps
    lr: Optional[Positive] = None  # learning rate (default: 1e-3 for adapters, 2e-5 for full fine-tuning)
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and norms)
    warmup_ratio: Share = 0.1  # linear warm-up, as a fraction of the optimiser steps
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 42  # weights, shuffling and dropout
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # mixed precision; auto: the accelerate config's, else no
    group_by_length: bool = True  # batches of pairs of similar length (--no-group-by-length: plain shuffled batches)
    patience: int = 2  # early stopping: epochs without a dev improvement; 0 disables
    metric: Metric = "spearman"  # dev metric for model selection
    eval_batch_size: Count = 128  # dev evaluation batch
    normalize: Literal["auto", "range", "zscore"] = "auto"  # target scaling (auto: the declared range, else z-score)
    loss: Loss = "mse"
    """mse on the normalised score; bi-encoders also cosent or angle (rank losses: only the order of the scores
    is learnt, so choose by spearman; the cosine is not calibrated to the score scale); cross-encoders also bce
    (on the score scaled to 0..1 by its range; the head then ends in a sigmoid)"""
    save_steps: Annotated[int, Bounds(0)] = 0
    """also checkpoint every N optimiser steps for --resume (0: at epoch ends only)"""
    keep_checkpoint: bool = False  # keep the resumable checkpoint after the run
    head_init: Literal["random", "lp"] = "random"
    """cross-encoders: lp fits the head on frozen pre-trained features first (LP-FT); `toolkit wise` needs it"""
    log_steps: Count = 10  # log the training loss (mean over processes) every N optimiser steps
    log_with: Optional[str] = None
    """also log loss, learning rate and dev metrics to an accelerate tracker: tensorboard (event files under
    RUN/trackers/; the 'tracking' extra), wandb, mlflow, ..."""

    def resolved_lr(self, adapter: str) -> float:
        return self.lr if self.lr is not None else adapter_kind(adapter).lr

    def validate(self) -> None:
        check_options(self)
        if self.log_with:
            check_tracker(self.log_with)

    def per_device_batch(self, processes: int) -> int:
        if self.global_batch_size is None:
            return self.batch_size
        parts = processes * self.grad_accum
        if self.global_batch_size % parts:
            raise ToolkitError(f"--global-batch-size {self.global_batch_size} is not divisible by {processes} "
                               f"processes x {self.grad_accum} accumulation steps")
        return self.global_batch_size // parts


@dataclass
class TrainResult:
    """What ``train`` returns: the summary written to metrics.json, the best checkpoint's dev
    predictions, and the model as training left it (unwrapped; its last state, not the best).
    A run that had already finished returns its summary only."""

    summary: dict
    dev_predictions: Optional[np.ndarray] = None
    model: Any = None


@dataclass
class BatchSeen:
    """What one process trained on in one batch, for ``train(observe=...)`` (tracing, tests)."""

    epoch: int
    batch: int  # index of the global batch in the epoch
    rank: int
    indices: list[int]  # training pairs (positions among the training pairs, in file order) that counted


def objective_model(model_cfg: ModelConfig, cfg: TrainConfig) -> ModelConfig:
    """The loss checked against the architecture; the model config as the loss needs it (saved in
    config.json, so that every later command applies the sigmoid a BCE-trained head ends in)."""
    arch = architecture(model_cfg.arch)
    if cfg.loss not in arch.losses:
        why = "ranks a bi-encoder's similarities" if cfg.loss in RANK_LOSSES else \
            "is for cross-encoders (a bi-encoder's cosine is no logit)"
        raise ToolkitError(f"--loss {cfg.loss} {why}: {arch.name}-encoders train with --loss "
                           f"{' or '.join(arch.losses)}")
    if not arch.has_head:
        return model_cfg
    if cfg.loss == "bce":
        if model_cfg.head_activation == "identity":
            raise ToolkitError("--loss bce trains the logit of a sigmoid head: drop --head-activation identity")
        model_cfg = dataclasses.replace(model_cfg, head_activation="sigmoid")
    if cfg.head_init == "lp" and model_cfg.head_activation == "sigmoid":
        raise ToolkitError("--head-init lp fits the head's last layer to the score by least squares, which a "
                           "sigmoid head cannot keep: use it with --loss mse and the identity head")
    return model_cfg


def label_scale(cfg: TrainConfig, model_cfg: ModelConfig, score_range, train_scores: np.ndarray) -> LabelScale:
    kind = cfg.normalize if cfg.normalize != "auto" else ("range" if score_range else "zscore")
    if architecture(model_cfg.arch).needs_range and kind != "range":
        raise ToolkitError("--arch bi maps the cosine onto the score range: declare it with --score-range LOW:HIGH")
    if model_cfg.head_activation == "sigmoid" and kind != "range":
        raise ToolkitError("a sigmoid head (--loss bce) predicts the score scaled to 0..1 by its range: declare it "
                           "with --score-range LOW:HIGH (z-scored targets leave 0..1)")
    if kind == "range":
        if score_range is None:
            raise ToolkitError("--normalize range needs --score-range LOW:HIGH")
        return LabelScale.from_range(*score_range)
    return LabelScale.from_scores(train_scores)


def config_sections(model_cfg: ModelConfig, cfg: TrainConfig, data: DataConfig) -> dict:
    """The run's settings as config.json keeps them (and a rerun is compared with)."""
    return {"model": dataclasses.asdict(model_cfg), "train": {**dataclasses.asdict(cfg), "lr": cfg.resolved_lr(
        model_cfg.adapter)}, "data": dataclasses.asdict(data)}


def check_tracker(name: str) -> None:
    """accelerate drops a tracker whose package is missing without a word: refuse it instead."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    known = [t.value for t in LoggerType if t.value != "all"]
    if name not in known:
        raise ToolkitError(f"--log-with {name}: not a tracker accelerate knows; choose one of {', '.join(known)}")
    if LoggerType(name) not in get_available_trackers():
        hint = " (pip install tensorboardX, or the toolkit's 'tracking' extra)" if name == "tensorboard" else ""
        raise ToolkitError(f"--log-with {name}: its package is not installed{hint}")
