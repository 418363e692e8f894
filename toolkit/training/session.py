"""A run as it starts and while it trains: how it starts (fresh, resumed, already finished; a rerun
with other settings refused) and the ``Session`` every step of the loop reads."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from toolkit.common.atomic_io import read_json
from toolkit.common.config_io import from_dict
from toolkit.common.errors import ToolkitError
from toolkit.common.settings_diff import differences, summarize
from toolkit.model.batching import LengthGroupedBatchSampler
from toolkit.model.config import ModelConfig
from toolkit.model.regressor import PairRegressor
from toolkit.scoring.torch_engine import Predictor
from toolkit.sources import PairChunk
from toolkit.training.checkpoint import find_checkpoint
from toolkit.training.config import TrainConfig
from toolkit.training.run_data import DataConfig
from toolkit.training.run_dir import CONFIG, METRICS, WEIGHTS_DIR
from toolkit.training.run_log import RunLog


def check_same_run(out: Path, sections: dict, world: dict) -> None:
    """A rerun continues a run only with the settings it was started with."""
    saved = read_json(out / CONFIG)
    asked = json.loads(json.dumps(sections))
    for name, cls in (("model", ModelConfig), ("train", TrainConfig), ("data", DataConfig)):  # added since: default
        if isinstance(saved.get(name), dict):
            saved[name] = json.loads(json.dumps(dataclasses.asdict(from_dict(cls, saved[name], str(out / CONFIG)))))
    diffs = differences({k: saved.get(k) for k in asked}, asked)
    diffs += differences({k: saved.get("resolved", {}).get(k) for k in world}, world, "resolved")
    if diffs:
        raise ToolkitError(f"{out / CONFIG}: this run was started with other settings: {summarize(diffs)}; "
                           "rerun with its settings, or choose another --out (or --overwrite)")


def how_it_starts(out: Path, sections: dict, world: dict, overwrite: bool, resume: bool,
           resume_if_exists: bool) -> tuple[str, Optional[Path]]:
    """How this run starts: ("fresh" | "resume" | "finished", checkpoint to resume from)."""
    if resume:
        checkpoint = find_checkpoint(out)
        if checkpoint is None:
            raise ToolkitError(f"{out}: no checkpoint to resume from"
                               + (" (the run finished)" if (out / METRICS).exists() else ""))
        return "resume", checkpoint
    if not (out / CONFIG).exists() or overwrite:
        return "fresh", None
    if not resume_if_exists:
        raise ToolkitError(f"{out}: already holds a run; choose another --out, pass --overwrite, or "
                           "--resume-if-exists to continue it")
    check_same_run(out, sections, world)
    if (out / METRICS).exists():
        return "finished", None
    checkpoint = find_checkpoint(out)
    return ("resume", checkpoint) if checkpoint is not None else ("fresh", None)


@dataclass
class Session:
    """A run while it trains: what every step needs, built once by ``_set_up``."""

    out: Path
    cfg: TrainConfig
    model_cfg: ModelConfig
    accelerator: Any
    model: Any  # as accelerate prepared it (DDP or DeepSpeed wrapper)
    unwrapped: PairRegressor
    optimizer: Any
    scheduler: Any
    loader: Any
    sampler: LengthGroupedBatchSampler
    dev_pairs: PairChunk
    predictor: Predictor
    log: RunLog
    facts: dict  # for metrics.json: parameter counts, processes, batch sizes
    best_pred: Optional[np.ndarray] = None
    bar: Any = None
    epoch_start: float = 0.0
    epoch_start_pairs: int = 0  # the epoch's pairs already trained when its timer started (a resume restores them)
    kernel_said: set = field(default_factory=set)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def weights_dir(self) -> Path:
        return self.out / WEIGHTS_DIR

    @property
    def loss_scale(self) -> float:
        """Undoes DDP's average over processes and accelerate's division by the accumulation steps:
        the weights of LengthGroupedBatchSampler already make each step's loss a mean."""
        return float(self.accelerator.num_processes * self.cfg.grad_accum)
