"""Scoring throughput: PyTorch eager vs our ONNX Runtime bundles (fp32, int8), same pairs, same threads.

    python benchmarks/bench_export.py --run runs/stsb-seqbn --out runs/bench-export

The pairs: 20,000 derived from STS-B test (its 1379 pairs, then each first sentence paired with
other test sentences), scored by
- PyTorch eager: the tokenizer and ``model(**batch)`` over batches in file order, as a user's
  script (the seed article's) does, no length sorting, no reuse of embeddings;
- the fp32 and int8 bundles through ``toolkit.scoring.onnx_bundle.Bundle``: once as the same plain loop
  (file order, every sentence encoded), once as the runtime scores by default (length-sorted
  batches, each distinct sentence embedded once).
Each also scores STS-B test itself for its Spearman. Threads: 2 for torch and for ONNX Runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from toolkit.scoring.onnx_bundle import Bundle  # noqa: E402
from toolkit.artifacts.onnx_export import ExportConfig, export_onnx  # noqa: E402
from toolkit.scoring.metrics import evaluate_predictions  # noqa: E402
from toolkit.training.run_dir import load_run  # noqa: E402
from toolkit.sources import SourceOptions, read_pairs  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def derived_pairs(s1: list[str], s2: list[str], n: int) -> tuple[list[str], list[str]]:
    """The test pairs, then first sentences paired with second sentences further along."""
    m = len(s1)
    a = [s1[i % m] for i in range(n)]
    b = [s2[(i + 97 * (i // m)) % m] for i in range(n)]
    return a, b


def eager_scores(run, s1: list[str], s2: list[str], batch_size: int) -> np.ndarray:
    """tokenizer + model(**batch) in file order: what a plain PyTorch scoring script does."""
    tok, model = run.tokens.tokenizer, run.model.eval()
    max_length = run.model.cfg.max_length
    out = []
    with torch.inference_mode():
        for i in range(0, len(s1), batch_size):
            a, b = s1[i:i + batch_size], s2[i:i + batch_size]
            if model.cfg.arch == "cross":
                batch = tok(a, b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                out.append(model(**batch).numpy())
            else:
                ea = model.embed(**tok(a, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
                eb = model.embed(**tok(b, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
                out.append(torch.nn.functional.cosine_similarity(ea, eb, dim=-1).numpy())
    return run.labels.denormalize(np.concatenate(out))


def timed(fn) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/stsb-seqbn", help="trained run directory (default: the main job's)")
    ap.add_argument("--out", default="runs/bench-export", help="where the bundles go")
    ap.add_argument("--pairs", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    test, _ = read_pairs(STSB / "sts-test.csv", SourceOptions())
    dev = STSB / "sts-dev.csv"
    s1, s2 = derived_pairs(test.s1, test.s2, args.pairs)

    bundles = {}
    for variant, kw in (("fp32", {}), ("int8", {"quantize": "int8"})):
        path = out / variant
        if not path.exists():
            export_onnx(args.run, path, ExportConfig(verify_data=str(dev), threads=args.threads, **kw),
                        say=lambda line: print(line, file=sys.stderr))
        bundles[variant] = Bundle.load(path, threads=args.threads, provider="cpu")
        bundles[variant].predictor(batch_size=args.batch_size)

    run = load_run(args.run, fused_kernel="off")
    rows = []
    ways = [("PyTorch eager (tokenizer + model loop)", lambda a, b: eager_scores(run, a, b, args.batch_size))]
    for variant, bundle in bundles.items():
        ways.append((f"ORT {variant}, same loop", lambda a, b, x=bundle: x.predict(a, b, dedupe=False, sort=False)))
    for variant, bundle in bundles.items():
        ways.append((f"ORT {variant}, runtime default (sorted, dedup)", lambda a, b, x=bundle: x.predict(a, b)))
    for name, fn in ways:
        fn(s1[:256], s2[:256])  # warm-up
        _, seconds = timed(lambda f=fn: f(s1, s2))
        pred = fn(test.s1, test.s2)
        metrics, _ = evaluate_predictions(pred, test.scores, ci=False)
        rows.append({"scorer": name, "pairs_per_s": args.pairs / seconds, "seconds": seconds,
                     "test_spearman": 100 * metrics["spearman"]})
        print(f"{name}: {args.pairs / seconds:.0f} pairs/s, test Spearman {100 * metrics['spearman']:.2f}",
              file=sys.stderr, flush=True)
    base = rows[0]
    cpu = platform.processor() or platform.machine()
    print(f"\n{args.pairs} STS-B-test-derived pairs, batch {args.batch_size}, {args.threads} threads, "
          f"{os.cpu_count()}-core {cpu}, {date.today()}, run {args.run}")
    print("| scorer | pairs/s | x eager | STS-B test Spearman | change |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['scorer']} | {r['pairs_per_s']:.0f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
              f"{r['test_spearman']:.2f} | {r['test_spearman'] - base['test_spearman']:+.2f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
