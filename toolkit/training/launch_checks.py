"""The checks a launch can make from its environment alone, before the model stack is imported (torch,
transformers and adapters take seconds per process): a wrong global batch or DeepSpeed config fails at
once, in every process. ``distributed.py`` checks the world again once the Accelerator exists."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Optional

from toolkit.common.errors import ToolkitError


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def deepspeed_config_file() -> Optional[dict]:
    """The DeepSpeed JSON named by the accelerate config, read and checked before accelerate reads it."""
    if not using_deepspeed():
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path == "none":
        return None  # the config's inline deepspeed_config block
    if not Path(path).is_file():
        raise ToolkitError(f"DeepSpeed config file {path} not found (named by the accelerate config's "
                           "deepspeed_config_file)")
    try:
        config = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ToolkitError(f"{path}: expected a JSON object")
    return config


def owned_settings(ds: dict, per_device: int, processes: int, grad_accum: int, max_grad_norm: float) -> dict:
    """The DeepSpeed settings our config owns; a fixed value in ``ds`` that disagrees is an error."""
    ours = {"train_micro_batch_size_per_gpu": per_device, "gradient_accumulation_steps": grad_accum,
            "train_batch_size": per_device * processes * grad_accum, "gradient_clipping": max_grad_norm}
    for key, value in ours.items():
        fixed = ds.get(key, "auto")
        if fixed != "auto" and float(fixed) != float(value):
            raise ToolkitError(f"the DeepSpeed config fixes {key}={fixed}, but the training settings give {value}: "
                               f"set it to \"auto\" (the toolkit's flags own it)")
    return ours


def check_launch(per_device_batch: Callable[[int], int], grad_accum: int, max_grad_norm: float) -> None:
    """The world's settings checked from the launcher's environment before the model stack is imported
    (seconds per process), so that a wrong global batch or DeepSpeed config fails at once; the checks
    after the Accelerator exists stay, for worlds made otherwise."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    per_device = per_device_batch(processes)
    ds = deepspeed_config_file()
    if ds is not None:
        owned_settings(ds, per_device, processes, grad_accum, max_grad_norm)
