"""OpenVINO as a bundle's engine (the ``openvino`` extra): the bundle's own ONNX graph, compiled for this CPU.

OpenVINO reads the bundle's ``model.onnx`` directly (its ONNX frontend takes ONNX Runtime's fused
com.microsoft operators too), so a bundle needs no second file. Tokenising, length order, bi-encoder
de-duplication and the cosine stay ``PairScorer``'s; only the forward differs from ``OnnxEngine``.
Precision is an inference hint on the same weights: ``bf16`` (AMX or AVX512-BF16 CPUs: OpenVINO's own
default there) or ``f32``. Batches go through an ``AsyncInferQueue``: with the throughput hint, as many
batches run at once as OpenVINO made streams (on a 2-core CPU: two batches on one core each).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolkit.common.errors import ToolkitError, first_line
from toolkit.scoring.onnx_bundle import OnnxEngine

PRECISIONS = ("bf16", "f32")
HINTS = ("latency", "throughput")


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_precisions() -> tuple[str, ...]:
    """What OpenVINO can run on this CPU, fastest first (bf16 needs AMX or AVX512-BF16: OpenVINO reports it)."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ("bf16", "f32") if "BF16" in caps else ("f32",)


def version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]


def compile_bundle(model_path: Path, precision: str, hint: str, threads: Optional[int]):
    """The bundle's graph compiled for this CPU; one line naming the file if OpenVINO cannot read it."""
    try:
        import openvino as ov
    except ImportError:
        raise ToolkitError("--runtime openvino needs OpenVINO: pip install 'sentence-pair-toolkit[openvino]'") from None
    if precision not in PRECISIONS:
        raise ToolkitError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "bf16" and "bf16" not in cpu_precisions():
        raise ToolkitError("OpenVINO bf16 needs a CPU with AMX or AVX512-BF16; this one has neither (use f32)")
    core = ov.Core()
    # no CACHE_DIR (OpenVINO's compiled-blob cache): it saved 0.1 s a load, and with blobs of both
    # precisions of one graph in it, OpenVINO 2026.4 corrupted its heap ("corrupted size vs. prev_size")
    config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(str(model_path), "CPU", config)
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own for graphs it cannot convert
        raise ToolkitError(f"{model_path}: OpenVINO cannot compile it ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    """OpenVINO's message without its source-location lines (its first line is only a file and line number)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '")) and not ln.endswith(".cpp")]
    return first_line(useful[-1] if useful else e)


class OpenVinoEngine(OnnxEngine):
    """``OnnxEngine``'s tokenising and padding; the forward on an OpenVINO compiled model, batches queued
    over its infer requests."""

    runtime = "openvino"
    provider = "CPU"

    def __init__(self, compiled, tokenizer, metadata: dict, precision: str, hint: str):
        super().__init__(compiled, tokenizer, metadata)
        import openvino as ov

        self.precision, self.hint = precision, hint
        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(compiled, self.requests)
        self.request = compiled.create_infer_request()

    def describe(self) -> str:
        return f"openvino {self.precision}, {self.hint} hint, {self.requests} infer request(s)"

    def forward(self, batch: list) -> np.ndarray:
        start = time.perf_counter()
        feeds = self.feeds(batch)
        middle = time.perf_counter()
        out = self.request.infer(feeds)[0]
        self.timing["pad"] += middle - start
        self.timing["run"] += time.perf_counter() - middle
        return np.array(out, dtype=np.float32).reshape(len(batch), -1)

    def map_batches(self, batches: list[list], forward: Callable[[list], np.ndarray]) -> list[np.ndarray]:
        """The engine's own forward goes through the queue (batches run concurrently, one per stream);
        any other ``forward`` runs batch by batch."""
        if forward != self.forward or self.requests == 1:
            return [forward(b) for b in batches]
        results: list[Optional[np.ndarray]] = [None] * len(batches)

        def done(request, i: int) -> None:
            results[i] = np.array(request.get_output_tensor(0).data, dtype=np.float32).reshape(len(batches[i]), -1)

        self.queue.set_callback(done)
        start = time.perf_counter()
        pad = 0.0
        for i, batch in enumerate(batches):
            t = time.perf_counter()
            feeds = self.feeds(batch)
            pad += time.perf_counter() - t
            self.queue.start_async(feeds, userdata=i)
        self.queue.wait_all()
        self.timing["pad"] += pad
        self.timing["run"] += time.perf_counter() - start - pad
        return results  # type: ignore[return-value]
