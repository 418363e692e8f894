"""Offline scoring throughput of a cross-encoder: ``toolkit score`` vs PyTorch eager vs sentence-transformers.

    python benchmarks/bench_score.py --run runs/bench/cross-none --out runs/bench-score

The same pairs (derived from STS-B test: its 1379 pairs, then first sentences paired with other
test sentences) scored by
- PyTorch eager as the seed article does it: tokenizer + ``model(**batch)``, batch 64, file order;
- sentence-transformers ``CrossEncoder.predict`` on the same weights (the run merged into a plain
  transformers folder), torch backend, and ``backend="onnx"`` when it runs here;
- ``toolkit score`` with the fp32 and int8 bundles of the run (Parquet in, Parquet out).
2 threads everywhere. Each also scores STS-B test for its Spearman against gold. Then peak RSS of
``toolkit score`` (int8) in a subprocess at two file sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from toolkit.export import ExportConfig, export_onnx  # noqa: E402
from toolkit.merge import merge_run  # noqa: E402
from toolkit.metrics import evaluate_predictions  # noqa: E402
from toolkit.run import load_run  # noqa: E402
from toolkit.score import ScoreConfig, score_file  # noqa: E402
from toolkit.sources import Columns, SourceOptions, read_pairs  # noqa: E402

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb"


def write_pairs(path: Path, s1: list[str], s2: list[str], n: int) -> None:
    m = len(s1)
    ids = [f"p{i}" for i in range(n)]
    a = [s1[i % m] for i in range(n)]
    b = [s2[(i + 97 * (i // m)) % m] for i in range(n)]
    pq.write_table(pa.table({"id": ids, "sentence1": a, "sentence2": b}), path, row_group_size=8192)


def eager(run, s1, s2, batch_size: int) -> np.ndarray:
    tok, model = run.tokens.tokenizer, run.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(s1), batch_size):
            batch = tok(s1[i:i + batch_size], s2[i:i + batch_size], padding=True, truncation=True,
                        max_length=run.model.cfg.max_length, return_tensors="pt")
            out.append(model(**batch).numpy())
    return run.labels.denormalize(np.concatenate(out))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench/cross-none", help="a cross-encoder run (default: bench_stsb's best)")
    ap.add_argument("--out", default="runs/bench-score")
    ap.add_argument("--pairs", type=int, default=50000)
    ap.add_argument("--rss-pairs", type=int, nargs=2, default=[50000, 1000000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip", nargs="*", default=[],
                    help="parts to leave out (eager, ce-torch, ce-onnx, fp32, ray, rss)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test, _ = read_pairs(STSB / "sts-test.csv", SourceOptions())
    dev = STSB / "sts-dev.csv"
    data = out / f"pairs-{args.pairs}.parquet"
    if not data.exists():
        write_pairs(data, test.s1, test.s2, args.pairs)
    table = pq.read_table(data)
    s1, s2 = table.column("sentence1").to_pylist(), table.column("sentence2").to_pylist()
    test_file = out / "test.parquet"
    pq.write_table(pa.table({"id": test.ids, "sentence1": test.s1, "sentence2": test.s2}), test_file)

    run = load_run(args.run, fused_kernel="off")
    if run.model.cfg.arch != "cross":
        raise SystemExit(f"{args.run}: bench_score compares cross-encoders; this run is {run.model.cfg.arch}")
    for variant, kw in (("fp32", {}), ("int8", {"quantize": "int8"})):
        if not (out / variant).exists():
            export_onnx(args.run, out / variant, ExportConfig(verify_data=str(dev), threads=args.threads, **kw),
                        log=lambda line: print(line, file=sys.stderr))
    merged = out / "merged"
    if not merged.exists():
        merge_run(args.run, merged)

    results = []

    def record(name: str, fn_all, fn_test) -> None:
        fn_all(s1[:256], s2[:256])  # warm-up
        t = time.perf_counter()
        fn_all(s1, s2)
        seconds = time.perf_counter() - t
        pred = fn_test()
        spearman = 100 * evaluate_predictions(np.asarray(pred, dtype=np.float64), test.scores, ci=False)[0]["spearman"]
        results.append({"scorer": name, "pairs_per_s": len(s1) / seconds, "seconds": seconds,
                        "test_spearman": spearman})
        print(f"{name}: {len(s1) / seconds:.0f} pairs/s, test Spearman {spearman:.2f}", file=sys.stderr, flush=True)

    if "eager" not in args.skip:
        record("PyTorch eager (tokenizer + model loop)", lambda a, b: eager(run, a, b, args.batch_size),
               lambda: eager(run, test.s1, test.s2, args.batch_size))
    from sentence_transformers import CrossEncoder

    for backend in ("torch", "onnx"):
        if f"ce-{backend}" in args.skip:
            continue
        try:
            ce = CrossEncoder(str(merged / "model"), num_labels=1, backend=backend, activation_fn=torch.nn.Identity(),
                              max_length=run.model.cfg.max_length, local_files_only=True)
        except Exception as e:  # report why a backend does not run here, then go on
            print(f"CrossEncoder backend={backend}: did not run here ({type(e).__name__}: {str(e).splitlines()[0]})",
                  file=sys.stderr)
            results.append({"scorer": f"CrossEncoder backend={backend}", "error": str(e).splitlines()[0]})
            continue
        record(f"CrossEncoder.predict, backend={backend}",
               lambda a, b, c=ce: c.predict(list(zip(a, b)), batch_size=args.batch_size, show_progress_bar=False),
               lambda c=ce: c.predict(list(zip(test.s1, test.s2)), batch_size=args.batch_size,
                                      show_progress_bar=False))

    options = SourceOptions(columns=Columns(id_col="id"), need_score=False)
    for variant in [v for v in ("fp32", "int8") if v not in args.skip]:
        cfg = ScoreConfig(threads=args.threads, batch_size=args.batch_size, restart=True, progress=False)

        def run_score(a, b, v=variant, c=cfg):
            score_file(str(out / v), str(data if len(a) == len(s1) else out / "warm.parquet"),
                       str(out / f"scores-{v}.parquet"), options, c)

        pq.write_table(pa.table({"id": [f"w{i}" for i in range(256)], "sentence1": s1[:256],
                                 "sentence2": s2[:256]}), out / "warm.parquet")

        def test_scores(v=variant, c=cfg):
            score_file(str(out / v), str(test_file), str(out / f"test-{v}.parquet"), options, c)
            return pq.read_table(out / f"test-{v}.parquet").column("score").to_numpy()

        record(f"toolkit score, {variant} bundle", run_score, test_scores)

    if "ray" not in args.skip:
        import ray

        from toolkit.score_ray import RayConfig, score_ray

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"ray.init: {time.perf_counter() - t:.1f}s (not counted below)", file=sys.stderr)
        ray_cfg = ScoreConfig(threads=1, batch_size=args.batch_size, restart=True, progress=False)

        def ray_score(a, b):
            score_ray(str(out / "int8"), str(data if len(a) == len(s1) else out / "warm.parquet"),
                      str(out / "scores-ray"), options, ray_cfg, RayConfig())

        def ray_test():
            score_ray(str(out / "int8"), str(test_file), str(out / "test-ray"), options, ray_cfg, RayConfig())
            got = {r["id"]: r["score"] for r in pads.dataset(str(out / "test-ray")).to_table().to_pylist()}
            return [got[i] for i in test.ids]

        record(f"toolkit score --engine ray, int8 bundle ({os.cpu_count()} actors x 1 thread, local Ray; "
               "actor start-up included)", ray_score, ray_test)
        ray.shutdown()

    rss = {}
    for n in [] if "rss" in args.skip else args.rss_pairs:
        path = out / f"pairs-{n}.parquet"
        if not path.exists():
            write_pairs(path, test.s1, test.s2, n)
        cmd = [sys.executable, "-c",
               # VmHWM, not getrusage's ru_maxrss: that one keeps this (large) parent's RSS across fork+exec
               "import sys; from toolkit.cli import main; rc = main(sys.argv[1:]); "
               "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr); "
               "sys.exit(rc)",
               "score", str(out / "int8"), str(path), "-o", str(out / f"rss-{n}.parquet"), "--id-col", "id",
               "--threads", str(args.threads), "--restart", "--quiet"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        rss[n] = {"peak_rss_mib": int(proc.stderr.strip().splitlines()[-1]) / 1024,
                  "seconds": time.perf_counter() - t}
        print(f"peak RSS at {n} pairs: {rss[n]['peak_rss_mib']:.0f} MiB ({rss[n]['seconds']:.0f}s)", file=sys.stderr)

    timed = [r for r in results if "pairs_per_s" in r]
    base = next((r for r in timed if r["scorer"].startswith("PyTorch eager")), timed[0])
    print(f"\n{len(s1)} STS-B-test-derived pairs, batch {args.batch_size}, {args.threads} threads, "
          f"{os.cpu_count()}-core {platform.machine()}, {date.today()}, run {args.run}")
    print("| scorer | pairs/s | x eager | STS-B test Spearman | change |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['scorer']} | did not run: {r['error'][:80]} | | | |")
            continue
        print(f"| {r['scorer']} | {r['pairs_per_s']:.0f} | {r['pairs_per_s'] / base['pairs_per_s']:.2f} | "
              f"{r['test_spearman']:.2f} | {r['test_spearman'] - base['test_spearman']:+.2f} |")
    for n, v in rss.items():
        print(f"peak RSS, toolkit score int8, {n} pairs: {v['peak_rss_mib']:.0f} MiB ({v['seconds']:.0f}s)")
    (out / "results.json").write_text(json.dumps({"rows": results, "rss": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
