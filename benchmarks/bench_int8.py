"""ONNX Runtime's int8 schemes on this CPU: which lose Spearman, which are fast, and why.

    python benchmarks/bench_int8.py runs/cross-fp32 [--bundle runs/cross-int8] [--threads 2]

From an fp32 bundle (its gate: within 1e-4 of PyTorch), each candidate quantises the same graph's
weight MatMuls; each is scored on STS-B dev (the export gate's pairs) and timed on them, tiled 4x
(median of 3 after a warm-up), batch 64, length-sorted, through the toolkit's own PairScorer:
- dynamic: what ``toolkit export --quantize int8`` does first (weights int8 per channel, activations u8 per
  tensor, quantised at run time: MatMulInteger, fused by ONNX Runtime into DynamicQuantizeMatMul);
- dynamic, FFN output in fp32: the same with the 1536->384 projection of each layer left in fp32
  (its input, GELU's output, is what per-tensor activation quantisation handles worst): what the
  export retries with when the gate refuses the first;
- static QDQ: ONNX Runtime's static quantisation (QuantizeLinear/DequantizeLinear pairs, activations
  calibrated with MinMax on 300 STS-B train pairs);
- MatMulNBits 8-bit: weights int8 in blocks of 32 along K, activations quantised per block of 32 at
  run time, int8 dot products (``accuracy_level`` 4);
- ``--bundle``: an exported int8 bundle as is (e.g. the fused-attention graph).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from statistics import median

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_info  # noqa: E402
from toolkit.scoring.onnx_bundle import Bundle  # noqa: E402
from toolkit.scoring.metrics import evaluate_predictions  # noqa: E402
from toolkit.sources import SourceOptions, read_pairs  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def ffn_out_nodes(model: onnx.ModelProto) -> list[str]:
    """The MatMuls whose weight is (intermediate, hidden): each layer's FFN output projection."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes = [inits.get(n.input[1]) for n in model.graph.node if n.op_type == "MatMul"]
    wide = max(s[0] for s in shapes if s)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and (inits.get(n.input[1]) or (0,))[0] == wide]


def dynamic(src: Path, dst: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=exclude, extra_options={"DefaultTensorType": 1})


def static(src: Path, dst: Path, bundle: Bundle, calib) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    items = bundle.encode(calib.s1, calib.s2).items
    feeds = [bundle.engine.feeds(items[k:k + 64]) for k in range(0, len(items), 64)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                    extra_options={"DefaultTensorType": 1})


def nbits(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                             algo_config=config)
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", help="an fp32 bundle")
    ap.add_argument("--bundle", action="append", default=[], help="an int8 bundle to time as is (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # the quantisers' per-tensor notes

    bundle = Bundle.load(args.fp32, threads=args.threads, provider="cpu")
    dev, _ = read_pairs(str(STSB / "sts-dev.csv"), SourceOptions(format="stsb"), gold=True)
    train, _ = read_pairs(str(STSB / "sts-train.csv"), SourceOptions(format="stsb", limit=300), gold=True)
    s1, s2 = dev.s1 * 4, dev.s2 * 4
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1

    def row(name: str, session) -> dict:
        bundle.engine.session = session
        pred = bundle.predict(dev.s1, dev.s2)
        bundle.predict(s1[:256], s2[:256])
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            bundle.predict(s1, s2)
            times.append(time.perf_counter() - t)
        rho = 100 * evaluate_predictions(pred, dev.scores, ci=False)[0]["spearman"]
        return {"name": name, "rate": len(s1) / median(times), "spearman": rho, "pred": pred}

    rows = [row("fp32 (reference)", bundle.session)]
    ref = rows[0]["pred"]
    graph = onnx.load(str(Path(args.fp32) / "model.onnx"))
    graph.graph.ClearField("value_info")
    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "fp32.onnx"
        onnx.save(graph, str(src))
        builds = {"dynamic (per-tensor u8 activations)": lambda d: dynamic(src, d, []),
                  "dynamic, FFN output in fp32": lambda d: dynamic(src, d, ffn_out_nodes(graph)),
                  "static QDQ (MinMax, 300 train pairs)": lambda d: static(src, d, bundle, train),
                  "MatMulNBits 8-bit, blocks of 32": lambda d: nbits(src, d)}
        for name, build in builds.items():
            dst = Path(work) / "q.onnx"
            build(dst)
            rows.append(row(name, ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])))
    for path in args.bundle:
        other = Bundle.load(path, threads=args.threads, provider="cpu")
        rows.append(row(f"bundle {Path(path).name} ({other.metadata['graph']['attention']} attention)",
                        other.session))

    print(f"\n{date.today()}, {cpu_info()}, onnxruntime {ort.__version__}, {args.threads} threads, "
          f"{bundle.arch}-encoder {args.fp32}; STS-B dev ({len(dev)} pairs; timed x4 tiled, median of {args.repeats})")
    print("\n| int8 scheme | pairs/s | × fp32 | dev Spearman | change vs fp32 | largest score diff |\n|---|---:|---:|---:|---:|---:|")
    base = rows[0]
    for r in rows:
        print(f"| {r['name']} | {r['rate']:,.0f} | {r['rate'] / base['rate']:.2f} | {r['spearman']:.2f} | "
              f"{r['spearman'] - base['spearman']:+.2f} | {np.abs(r['pred'] - ref).max():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
