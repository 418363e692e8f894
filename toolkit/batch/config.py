"""How ``toolkit score`` scores (``ScoreConfig``) and what it reports (``ScoreSummary``), for both
engines: the local streaming loop and Ray."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from toolkit.common.choices import Provider, Runtime
from toolkit.common.option_types import Count, Shard, check_options


@dataclass
class ScoreConfig:
    """How to score: parts, batches, threads; the manifest keeps those that change the output."""

    chunk_size: Count = 8192  # input records per part (the unit of resumption)
    batch_size: Count = 64  # pairs per forward pass
    threads: Optional[Count] = None
    """ONNX Runtime / torch threads (default: all cores; --engine ray: per actor, default 1)"""
    shard: Optional[Shard] = None  # score only shard I of N (0-based)
    restart: bool = False  # discard an earlier attempt's parts and start over
    keep_cols: tuple[str, ...] = ()  # input columns to copy into the output
    progress: bool = True  # progress bar with rate and ETA (--quiet: none)
    provider: Provider = "auto"
    """ONNX Runtime provider for a bundle: auto = CPU for int8, CUDA for fp32/fp16 where onnxruntime has it"""
    runtime: Runtime = "auto"
    """what runs a bundle's graph: onnxruntime, openvino (fp32 bundles; the openvino extra), or auto = the fastest
    that passes the bundle's gate on this machine, measured once and remembered (--engine ray: onnxruntime)"""

    def validate(self) -> None:
        check_options(self)


@dataclass
class ScoreSummary:
    rows: int = 0
    bad: int = 0
    written: int = 0
    resumed_parts: int = 0
    seconds: float = 0.0
    output: str = ""
    skipped_report: list[str] = field(default_factory=list)
    backend: str = ""  # what scored: provider or device, precision
    timing: dict[str, float] = field(default_factory=dict)
    """seconds per stage: read, tokenise (reader thread, overlapped with inference), waited (main thread
    idle for the reader: the part of reading and tokenising not hidden), pad, run (the engine), write, other
    (the rest of the main thread: loading the model, the manifest, the cosine, assembling the output);
    --engine ray: plan (the driver's read of the input), cluster (the rest), tokenise and run (summed over
    the actors)"""
    spread: dict[str, dict[str, int]] = field(default_factory=dict)
    """--engine ray: pairs scored per node and per actor (by Ray id)"""

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def time_split(self) -> str:
        """Where the wall time went, as one line of shares."""
        if not self.timing or self.seconds <= 0:
            return ""
        shares = ", ".join(f"{k} {100 * v / self.seconds:.0f}%" for k, v in self.timing.items())
        note = " (tokenise, run: summed over actors)" if "plan" in self.timing else \
            " (read and tokenise overlap inference on a reader thread)"
        return f"time: {shares} of {self.seconds:.1f}s{note}"
