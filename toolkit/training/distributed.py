"""Accelerate set-up that is right on CPUs too, and the checks that catch a wrong world early.

What accelerate 1.15 lacked, found on a 2-core CPU machine:
- ``accelerate launch --cpu --num_processes 2`` (and a MULTI_CPU config) starts one process unless
  mpirun is installed; the torchrun launcher of a MULTI_GPU config does start two, and they form one
  gloo world once the Accelerator is told ``cpu=True``.
- Under DeepSpeed without a GPU, accelerate leaves its backend unset: torch.distributed forms a world
  of two while each Accelerator believes it is process 0 of 1. Naming the gloo backend fixes that.
Both failures print success, so ``make_accelerator`` compares accelerate's view with torch's.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch

from toolkit.common.errors import ToolkitError
from toolkit.training.launch_checks import deepspeed_config_file, owned_settings, using_deepspeed


def cpu_has_bf16() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX); without it autocast emulates, slowly."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(requested: str) -> str:
    """``auto`` takes the accelerate config's mixed precision (or none); then check the hardware."""
    precision = requested
    if precision == "auto":
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") or "no"
    if precision not in ("no", "bf16", "fp16"):
        raise ToolkitError(f"mixed precision {precision!r} is not supported (no, bf16, fp16)")
    if precision == "no":
        return precision
    if torch.cuda.is_available():
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ToolkitError("bf16 asked, but this GPU has no bf16 support: use fp16 or no mixed precision")
        return precision
    if precision == "fp16":
        raise ToolkitError("fp16 asked, but there is no GPU: use --precision no "
                           "(or bf16 on a CPU with AMX/AVX512-BF16)")
    if not cpu_has_bf16():
        raise ToolkitError("bf16 asked, but this CPU has no bf16 support (no avx512_bf16/amx_bf16): "
                           "use --precision no, or set mixed_precision: 'no' in the accelerate config")
    return precision


def make_accelerator(precision: str, grad_accum: int, log_with: Optional[str] = None,
                     project_dir: Optional[Path] = None):
    """An Accelerator whose world matches torch.distributed's, on GPUs and on CPUs; ``log_with``:
    accelerate's trackers, writing under ``project_dir``."""
    if not torch.cuda.is_available():
        # DeepSpeed (when installed) finds no GPU and warns "Setting accelerator to CPU" on import;
        # naming its CPU accelerator is the same choice, without the warning
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    deepspeed_config_file()
    # accelerate keeps its settings in process-wide singletons; a second train() in the same process
    # (benchmarks, tests, notebooks) may ask for others. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    cpu = not torch.cuda.is_available()
    handlers = []
    if cpu and using_deepspeed():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        cpu = False  # accelerate turns DeepSpeed off under cpu=True
        skip_shm_comm_op()
    accelerator = Accelerator(
        cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=grad_accum, kwargs_handlers=handlers,
        # the batch sampler yields global batches that each process splits: the same examples make
        # one optimiser step whatever the number of processes
        dataloader_config=DataLoaderConfiguration(split_batches=True), log_with=log_with,
        project_dir=str(project_dir) if log_with else None)
    check_world(accelerator)
    return accelerator


def skip_shm_comm_op() -> None:
    """Keeps DeepSpeed's CPU backend from compiling its shared-memory all-reduce op (C++, 25 s on an
    idle 2-core CPU, at the first run on each machine): that op serves only ``inference_all_reduce``
    (DeepSpeed-Inference's tensor parallelism); training's collectives are torch.distributed's (gloo).
    DeepSpeed has no switch for it (DS_BUILD_SHM_COMM only pre-builds at install), but falls back to
    torch.distributed wherever the op is marked incompatible: marked so here."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def check_world(accelerator) -> None:
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    torch_world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if not launched == torch_world == accelerator.num_processes:
        raise ToolkitError(
            f"inconsistent distributed world: launcher WORLD_SIZE={launched}, torch.distributed "
            f"{torch_world}, accelerate {accelerator.num_processes} processes ({accelerator.distributed_type})")


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` concatenated in rank order (under split_batches: the global batch
    in its order), keeping the graph: the backward sums each element's gradient over the processes
    and gives every process its own slice's. Collective: every process calls it with the same shape
    (the batch sampler fills every batch, so each slice has per-device rows)."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))


def world(accelerator) -> str:
    """The processes and how they share the work, as the summary line says it: "1 process",
    "2 processes (multi_cpu)", "4 processes (deepspeed ZeRO-3)"."""
    n = accelerator.num_processes
    kind = accelerator.distributed_type.value.lower()
    zero = f" ZeRO-{zero_stage(accelerator)}" if zero_stage(accelerator) else ""
    return f"{n} process{'es' if n > 1 else ''}" + ("" if kind == "no" and not zero else f" ({kind}{zero})")


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0


def unwrap(accelerator, prepared: torch.nn.Module) -> torch.nn.Module:
    """The model that ``accelerator.prepare`` wrapped (for DDP, its ``module``). accelerate's own
    ``unwrap_model`` imports DeepSpeed (0.5 s of every run's start) to test for its engine wherever it is
    installed: asked only when DeepSpeed runs."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        return accelerator.unwrap_model(prepared)
    return prepared.module if isinstance(prepared, torch.nn.parallel.DistributedDataParallel) else prepared


def gathered(accelerator, params):
    """Full values of ZeRO-3-partitioned ``params`` inside the block (on every process); a no-op otherwise.
    Every process must enter it."""
    if zero_stage(accelerator) == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
    return nullcontext()


def align_deepspeed(accelerator, per_device: int, grad_accum: int, max_grad_norm: float) -> Optional[dict]:
    """The DeepSpeed config, with our settings where it says "auto"; a fixed value that disagrees
    with them is an error (our config owns batch sizes, accumulation and clipping)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return None
    ds = plugin.deepspeed_config
    ours = owned_settings(ds, per_device, accelerator.num_processes, grad_accum, max_grad_norm)
    ds.update(ours)  # accelerate would fill clipping "auto" with 1.0 and cannot read our batch sampler's size
    if ("optimizer" in ds) != ("scheduler" in ds):
        raise ToolkitError("the DeepSpeed config names an optimizer without a scheduler (or the reverse): "
                           "give both, with \"auto\" values, or neither")
    return ds
