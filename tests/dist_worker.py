"""Started by ``accelerate launch`` from test_distributed.py, once per process: trains through the
library API, then reports what this process saw of the world and a digest of its trained weights."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from toolkit.model import ModelConfig
from toolkit.sources import SourceOptions
from toolkit.train import DataConfig, TrainConfig, train


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = train(spec["out"], DataConfig(spec["train"], spec["dev"], SourceOptions()),
                   ModelConfig(**spec["model"]), TrainConfig(**spec["train_cfg"]))
    assert torch.distributed.is_initialized(), "no process group: this process trained alone"
    digest = hashlib.sha256()
    for name, p in sorted(result.model.named_parameters()):
        if p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().float().contiguous().numpy().tobytes())
    rank = torch.distributed.get_rank()
    report = {"rank": rank, "world_size": torch.distributed.get_world_size(),
              "launcher_world_size": int(os.environ["WORLD_SIZE"]), "digest": digest.hexdigest(),
              "dev_predictions": result.dev_predictions.tolist()}
    Path(spec["reports"], f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
