"""Training checkpoints for resuming: Accelerate's state (model, optimiser, scheduler, the RNG of
every process; DeepSpeed's own shards under ZeRO), where training stood, and the best weights so far.

Written to ``checkpoint.partial`` by every process, completed by the main process writing
``trainer_state.json`` last, then swapped in for ``checkpoint``. A run killed at any moment leaves
a complete ``checkpoint`` (or, between the two renames, ``checkpoint.old``).
The best weights live in the checkpoint (``best/``) and are published to the run's weights folder
only after the swap (and again on resume): a crash between the two can never pair a checkpoint
with another epoch's best weights.
Accelerate reads its files back with ``torch.load(weights_only=True)``: no arbitrary unpickling.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolkit.common.atomic_io import atomic_dir, fsync_dir, read_json, write_json

CHECKPOINT = "checkpoint"
STATE = "trainer_state.json"
BEST_PRED = "best_dev_predictions.npy"
BEST = "best"


@dataclass
class TrainerState:
    """Where training stands, beyond what the optimiser and model hold."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimiser steps so far
    best_epoch: int = 0
    best: Optional[dict] = None  # dev metrics of the best epoch
    since_best: int = 0
    history: list = field(default_factory=list)  # one entry per epoch (train_log.jsonl)
    steps: list = field(default_factory=list)  # one entry per logged interval of steps (steps.jsonl)
    epoch_loss_sum: float = 0.0  # over the epoch's pairs so far, all processes
    epoch_pairs: int = 0
    finished: bool = False  # early-stopped or out of epochs


def copy_tree(src: Path, dst: Path) -> None:
    """Hard links where the file system allows (files here are never modified in place), else copies."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def save_checkpoint(accelerator, run_dir: Path, weights_dir: Path, state: TrainerState, best_pred: np.ndarray,
                    save_best: Optional[Callable[[Path], None]]) -> None:
    """Every process must call. ``save_best(folder)`` writes the model as the new best weights (this
    checkpoint's epoch improved; every process calls it); None carries the previous best over."""
    partial, final, old = run_dir / f"{CHECKPOINT}.partial", run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    # accelerate warns on every save that safetensors dropped the adapters library's tied copy of the
    # word embeddings (prompt_tuning.base_model_embeddings); it is frozen and re-tied on load
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    accelerator.save_state(str(partial))
    if save_best is not None:
        save_best(partial / BEST)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if save_best is None:
            copy_tree(best_source(run_dir, weights_dir), partial / BEST)
        np.save(partial / BEST_PRED, np.asarray(best_pred, dtype=np.float64))
        write_json(partial / STATE, dataclasses.asdict(state))
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        fsync_dir(run_dir)
        if old.exists():
            shutil.rmtree(old)
        publish_best(final, weights_dir)
    accelerator.wait_for_everyone()


def best_source(run_dir: Path, weights_dir: Path) -> Path:
    """Where the best weights are now: the last checkpoint's, or before any checkpoint the weights
    published at epoch 0 (nothing else writes them before a checkpoint exists)."""
    checkpoint = find_checkpoint(run_dir)
    return checkpoint / BEST if checkpoint is not None else weights_dir


def publish_best(checkpoint: Path, weights_dir: Path) -> None:
    """The run's weights folder := the checkpoint's best weights (atomically)."""
    with atomic_dir(weights_dir) as tmp:
        copy_tree(checkpoint / BEST, tmp)


def find_checkpoint(run_dir: Path) -> Optional[Path]:
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if (run_dir / name / STATE).is_file():
            return run_dir / name
    return None


def load_checkpoint(accelerator, path: Path, weights_dir: Path) -> tuple[TrainerState, np.ndarray]:
    """Restore every process; the main one also republishes the checkpoint's best weights (the run
    may have been killed after the checkpoint and before they were published)."""
    accelerator.load_state(str(path))
    state = TrainerState(**read_json(path / STATE))
    if accelerator.is_main_process:
        publish_best(path, weights_dir)
    accelerator.wait_for_everyone()
    return state, np.load(path / BEST_PRED, allow_pickle=False)


def remove_checkpoints(run_dir: Path) -> None:
    for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.partial"):
        if (run_dir / name).exists():
            shutil.rmtree(run_dir / name)
