"""How close a bundle runs to this CPU's peak: multiply-accumulates per pair against the GEMM peak.

    python benchmarks/roofline.py [--threads 2]     # prints the fp32 and int8 GEMM peaks of this CPU

The work of an encoder is nearly all matrix products. Per token of a sequence of L tokens, each
layer does 4·h² (Q, K, V and output projections) + 2·h·ff (the feed-forward) multiply-accumulates,
2·L·h more for the attention scores and their weighted sum, and a bottleneck adapter 2·h·(h/r).
The peak is measured, not taken from a data sheet: one large MatMul through the same ONNX Runtime,
threads and quantisation (dynamic int8, weights per channel) that the bundles use.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# GEMM shapes of MiniLM-L6 at batch 64 x ~48 tokens (the attention and FFN projections), and a square one
SHAPES = ((3072, 384, 1536), (3072, 1536, 384), (3072, 384, 1152), (2048, 2048, 2048))


def macs_per_token(hidden: int, ffn: int, layers: int, length: int, adapter_width: int = 0) -> float:
    """Multiply-accumulates per token of a BERT encoder on sequences of ``length`` tokens."""
    return layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * length * hidden + 2 * hidden * adapter_width)


def macs_of(lengths: list[int], hidden: int, ffn: int, layers: int, adapter_width: int = 0) -> float:
    """Total multiply-accumulates to encode sequences of these (unpadded) lengths."""
    return float(sum(n * macs_per_token(hidden, ffn, layers, n, adapter_width) for n in lengths))


def adapter_width(metadata: dict, hidden: int) -> int:
    """Bottleneck width of a bundle's adapter that stays in the graph (bottleneck kinds; LoRA is merged)."""
    adapter = metadata.get("adapter") or {}
    if adapter.get("adapter") in ("seq_bn", "par_bn", "double_seq_bn"):
        width = int(hidden / float(adapter.get("reduction_factor") or 16))
        return 2 * width if adapter["adapter"] == "double_seq_bn" else width
    return 0


def _matmul_model(path: Path, k: int, n: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05, "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))


def gemm_rate(m: int, k: int, n: int, precision: str, threads: int, seconds: float = 2.0) -> float:
    """Measured multiply-accumulates per second of one [m, k] x [k, n] product in ONNX Runtime."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from toolkit.artifacts.onnx_export import quantizer_warnings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        _matmul_model(path, k, n)
        if precision == "int8":
            with quantizer_warnings():  # the quantiser's advice to pre-process, per call: not ours to show
                quantize_dynamic(str(path), str(Path(tmp) / "int8.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True, op_types_to_quantize=["MatMul"])
            path = Path(tmp) / "int8.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    session.run(None, {"X": x})
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        session.run(None, {"X": x})
        runs += 1
    return m * k * n * runs / elapsed


def gemm_peaks(threads: int) -> dict[str, dict]:
    """{precision: {"peak": MAC/s, "shapes": {shape: MAC/s}}} over SHAPES."""
    peaks = {}
    for precision in ("fp32", "int8"):
        rates = {"x".join(map(str, s)): gemm_rate(*s, precision, threads) for s in SHAPES}
        peaks[precision] = {"peak": max(rates.values()), "shapes": rates}
    return peaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for precision, p in gemm_peaks(args.threads).items():
        shapes = ", ".join(f"{s}: {r / 1e9:.1f}" for s, r in p["shapes"].items())
        print(f"{precision}: peak {p['peak'] / 1e9:.1f} GMAC/s ({shapes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
