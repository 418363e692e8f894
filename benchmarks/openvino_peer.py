"""OpenVINO as a peer of ``toolkit score``, on the same model, pairs, threads and batching.

Run by ``bench_score.py`` in OpenVINO's own virtual environment (``--openvino-venv``: openvino, nncf,
onnx, tokenizers, pyarrow, numpy; no torch, no transformers), so that its dependencies never meet
the toolkit's. It imports only ``toolkit.scoring.onnx_bundle`` (numpy-only) and swaps the bundle's ONNX Runtime
session for an OpenVINO compiled model of the same network (the standard-ops ONNX export, before ONNX
Runtime's fusions, which OpenVINO reads directly): tokenisation, length-sorted batches, bi-encoder
de-duplication and the cosine are then the toolkit's own code, and only the engine differs.

    python benchmarks/openvino_peer.py BUNDLE RAW.onnx --precision int8 --pairs P.parquet \
        --test T.parquet --threads 2 --out result.json

fp32 is OpenVINO as a user runs it: its defaults (the latency hint, one stream; bf16 inference where the
CPU has AMX or AVX512-BF16, which it reports as ``inference_precision``), the thread count given.
int8 is NNCF's post-training static quantisation with the transformer preset
(``model_type=TRANSFORMER``), calibrated on the pairs file's own first rows, as OpenVINO's and
sentence-transformers' documentation do it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.scoring.onnx_bundle import Bundle  # noqa: E402


class OpenVinoSession:
    """The two calls of an ONNX Runtime session that ``bundle.OnnxEngine`` makes, served by OpenVINO."""

    def __init__(self, compiled):
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def run(self, outputs, feeds):
        result = self.request.infer(feeds)
        return [result[self.compiled.output(0)]]


def compile_model(raw: Path, bundle: Bundle, precision: str, calib: tuple[list, list], threads: int):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(raw))
    if precision == "int8":
        import nncf

        items = bundle.encode(*calib).items
        batches = [items[k:k + bundle.batch_size] for k in range(0, len(items), bundle.batch_size)]
        feeds = [bundle.engine.feeds(b) for b in batches]
        model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    compiled = core.compile_model(model, "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: its short name (f32, bf16)
    return compiled, hint.to_string() if hasattr(hint, "to_string") else str(hint)


def read(path: str, n: int | None = None) -> tuple[list[str], list[str]]:
    table = pq.read_table(path, columns=["sentence1", "sentence2"])
    if n is not None:
        table = table.slice(0, n)
    return table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="the fp32 bundle (tokenizer, labels, batching)")
    ap.add_argument("raw", help="the same model as a standard-ops ONNX graph")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--pairs", required=True, help="Parquet pairs to time (sentence1, sentence2)")
    ap.add_argument("--test", required=True, help="Parquet pairs whose normalised scores are returned")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=8192, help="rows scored per call, as toolkit score's parts")
    ap.add_argument("--calib-pairs", type=int, default=300)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import openvino as ov

    bundle = Bundle.load(args.bundle, threads=args.threads, provider="cpu")
    bundle.batch_size = args.batch_size
    s1, s2 = read(args.pairs)
    t = time.perf_counter()
    compiled, inference_precision = compile_model(Path(args.raw), bundle, args.precision,
                                                  read(args.pairs, args.calib_pairs), args.threads)
    prepare_s = time.perf_counter() - t
    bundle.engine.session = OpenVinoSession(compiled)
    bundle.predict(s1[:256], s2[:256])  # warm-up
    t = time.perf_counter()
    for k in range(0, len(s1), args.chunk_size):
        bundle.predict(s1[k:k + args.chunk_size], s2[k:k + args.chunk_size])
    seconds = time.perf_counter() - t
    test = bundle.predict_normalized(*read(args.test))
    Path(args.out).write_text(json.dumps({
        "pairs": len(s1), "seconds": seconds, "pairs_per_s": len(s1) / seconds, "prepare_s": prepare_s,
        "openvino": ov.__version__, "inference_precision": inference_precision, "test_normalized": test.tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
