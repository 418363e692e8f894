"""The optimiser and its schedule: AdamW (no decay on biases and norms) with linear warm-up and
decay, or DeepSpeed's own where its config names them."""
from __future__ import annotations

import math

import torch

from toolkit.model.config import ModelConfig
from toolkit.model.regressor import PairRegressor
from toolkit.training.config import TrainConfig
from toolkit.training.distributed import align_deepspeed


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimiser(model: PairRegressor, model_cfg: ModelConfig, cfg: TrainConfig, accelerator, per_device: int,
               batches_per_epoch: int):
    """AdamW with linear warm-up and decay (DeepSpeed's own when its config names them)."""
    from transformers import get_linear_schedule_with_warmup

    ds_config = align_deepspeed(accelerator, per_device, cfg.grad_accum, cfg.max_grad_norm)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    groups = _param_groups(model, cfg.weight_decay)
    lr = cfg.resolved_lr(model_cfg.adapter)
    if ds_config is not None and "optimizer" in ds_config:  # DeepSpeed builds them; "auto" filled from ours
        from accelerate.utils import DummyOptim, DummyScheduler  # exported only where deepspeed is installed

        optimizer = DummyOptim(groups, lr=lr, weight_decay=cfg.weight_decay)
        return optimizer, DummyScheduler(optimizer, total_num_steps=total_steps,
                                         warmup_num_steps=warmup_steps), steps_per_epoch
    optimizer = torch.optim.AdamW(groups, lr=lr)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps), steps_per_epoch
