"""Started by ``accelerate launch`` from test_distributed.py, once per process: trains each run of its
spec through the library API, then reports what this process saw of the world, the training pairs
each of its batches counted, and a digest of its trained weights (rank 0 also saves the weights)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from toolkit.model.config import ModelConfig
from toolkit.sources import SourceOptions
from toolkit.training.config import BatchSeen, TrainConfig
from toolkit.training.loop import train
from toolkit.training.run_data import DataConfig


def main() -> None:
    spec = json.loads(sys.argv[1])
    for i, one in enumerate(spec.get("runs") or [{"out": spec["out"], "train_cfg": spec["train_cfg"]}]):
        # a run may bring its own data, model and report tag: one launch trains several tests' runs
        tag = one.get("tag", f"-{i}" if "runs" in spec else "")
        train_one({**spec, **one}, one["out"], one["train_cfg"], tag)
    # every report is written: leave without the interpreter's teardown, where a thread torch left up
    # aborts the process now and then on a loaded machine ("terminate called without an active
    # exception", exit -6), with or without destroy_process_group first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train_one(spec: dict, out: str, train_cfg: dict, tag: str) -> None:
    seen: list[dict] = []

    def observe(batch: BatchSeen) -> None:
        seen.append({"epoch": batch.epoch, "batch": batch.batch, "indices": batch.indices})

    data = DataConfig(train=spec["train"], dev=spec["dev"], source=SourceOptions())
    result = train(out, data, ModelConfig(**spec["model"]), TrainConfig(**train_cfg), observe=observe)
    assert torch.distributed.is_initialized(), "no process group: this process trained alone"
    digest = hashlib.sha256()
    for name, p in sorted(result.model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().contiguous().numpy().tobytes())
    rank = torch.distributed.get_rank()
    if rank == 0:  # the trained values themselves, for comparisons within a tolerance
        np.savez(Path(spec["reports"], f"weights{tag}.npz"),
                 **{name: p.detach().float().numpy() for name, p in result.model.named_parameters()
                    if p.requires_grad})
    report = {"rank": rank, "world_size": torch.distributed.get_world_size(),
              "launcher_world_size": int(os.environ["WORLD_SIZE"]), "digest": digest.hexdigest(),
              "dev_predictions": result.dev_predictions.tolist(), "seen": seen}
    Path(spec["reports"], f"rank{rank}{tag}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
