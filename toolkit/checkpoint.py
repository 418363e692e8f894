"""Training checkpoints for ``--resume``: Accelerate's state (model, optimiser, scheduler, the RNG
of every process; DeepSpeed's own shards under ZeRO) plus where training stood.

Written to ``checkpoint.partial`` by every process, completed by the main process writing
``trainer_state.json`` last, then swapped in for ``checkpoint``. A run killed at any moment leaves
a complete ``checkpoint`` (or, between the two renames, ``checkpoint.old``).
Accelerate reads its files back with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .io_utils import read_json, write_json

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"
BEST_PRED = "best_dev_predictions.npy"


@dataclass
class TrainerState:
    """Where training stands, beyond what the optimiser and model hold."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimiser steps so far
    best_epoch: int = 0
    best: Optional[dict] = None  # dev metrics of the best epoch
    since_best: int = 0
    history: list = field(default_factory=list)
    epoch_losses: list = field(default_factory=list)
    epoch_seen: int = 0
    finished: bool = False  # early-stopped or out of epochs


def save_checkpoint(accelerator, run_dir: Path, state: TrainerState, best_pred: np.ndarray) -> None:
    """Every process must call."""
    partial, final, old = run_dir / f"{CHECKPOINT}.partial", run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    # accelerate warns on every save that safetensors dropped the adapters library's tied copy of the
    # word embeddings (prompt_tuning.base_model_embeddings); it is frozen and re-tied on load
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        np.save(partial / BEST_PRED, np.asarray(best_pred, dtype=np.float64))
        write_json(partial / STATE, dataclasses.asdict(state))
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def find_checkpoint(run_dir: Path) -> Optional[Path]:
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if (run_dir / name / STATE).is_file():
            return run_dir / name
    return None


def load_checkpoint(accelerator, path: Path) -> tuple[TrainerState, np.ndarray]:
    accelerator.load_state(str(path))
    state = TrainerState(**read_json(path / STATE))
    return state, np.load(path / BEST_PRED, allow_pickle=False)


def remove_checkpoints(run_dir: Path) -> None:
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.partial"):
        if (run_dir / name).exists():
            shutil.rmtree(run_dir / name)
