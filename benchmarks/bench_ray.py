"""Scaling of ``toolkit score --engine ray`` on a real multi-node cluster, against the local engine.

    python benchmarks/bench_ray.py --bundle bundles/bi-int8 --pairs 200000 --out runs/bench-ray

On one file (STS-B test pairs cycled to ``--pairs``, CSV), in one run and one after the other:
- the local engine with 1 and with 2 threads (``toolkit score``, one process);
- the Ray engine on a cluster of separate ``ray start`` nodes on loopback (ray_cluster.py): a head with
  0 CPUs for tasks and 1, then 2, worker nodes of 1 CPU each (one scoring actor per worker, 1 thread);
  the job submitted by a driver process of its own (the CLI, ``--address``), cluster start-up excluded.
Every row is checked to have scored every pair once. Printed (and written to OUT/results.json): pairs/s
per row, Ray 2 workers / 1 worker, Ray / local at equal cores, and where the time went (the driver's
read of the input; tokenise and inference summed over actors; the rest of the job: Ray's scheduling,
moving parts between processes, writing). Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pyarrow.dataset as pads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_info  # noqa: E402
from ray_cluster import LocalCluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_pairs(stsb: Path, path: Path, n: int) -> Path:
    """STS-B test pairs cycled to ``n`` rows; past the first round a number is appended to both sentences,
    so no sentence repeats within a part (a bi-encoder part embeds each distinct sentence once)."""
    with open(stsb / "sts-test.csv", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2"])
        for i in range(n):
            r = rows[i % len(rows)]
            tag = f" ({i // len(rows)})" if i >= len(rows) else ""
            w.writerow([r[5] + tag, r[6] + tag])
    return path


def _score(args: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", "score", *args, "--quiet"], env=env,
                          capture_output=True, text=True)
    seconds = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"toolkit score {' '.join(args)} failed: {proc.stderr[-3000:]}")
    return seconds, proc.stderr


def _split(stderr: str) -> dict[str, float]:
    """The 'time:' line of toolkit score: stage -> share of the wall time (percent)."""
    line = next((x for x in stderr.splitlines() if x.startswith("time: ")), "")
    return {k: float(v) for k, v in re.findall(r"(\w+) (\d+)%", line)}


def _rows(out: Path) -> int:
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id"])
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{out}: duplicated ids")
    return len(ids)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True, help="an ONNX bundle (toolkit export --onnx)")
    p.add_argument("--stsb", default=str(ROOT.parent / "shared" / "data" / "stsb"))
    p.add_argument("--pairs", type=int, default=200_000)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--out", default="runs/bench-ray")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = make_pairs(Path(args.stsb), out / "pairs.csv", args.pairs)
    common = ["--chunk-size", str(args.chunk_size)]
    results = []
    for threads in (1, 2):
        target = out / f"local-{threads}.parquet"
        seconds, err = _score([args.bundle, str(pairs), "-o", str(target), "--threads", str(threads), "--restart",
                               *common])
        results.append({"row": f"local engine, {threads} thread{'s' * (threads > 1)}", "cores": threads,
                        "seconds": seconds, "pairs": _rows(target), "split": _split(err)})
        print(results[-1], flush=True)
    for workers in (1, 2):
        with LocalCluster(workers=workers, log_dir=out) as cluster:
            target = out / f"ray-{workers}"
            seconds, err = _score([args.bundle, str(pairs), "-o", str(target), "--engine", "ray", "--restart",
                                   "--address", cluster.address, *common], env={**cluster.env, "HF_HUB_OFFLINE": "1"})
        nodes = next((x for x in err.splitlines() if x.startswith("pairs per node: ")), "")
        results.append({"row": f"ray engine, {workers} worker node{'s' * (workers > 1)} x 1 CPU", "cores": workers,
                        "seconds": seconds, "pairs": _rows(target), "split": _split(err), "nodes": nodes})
        print(results[-1], flush=True)
    for r in results:
        if r["pairs"] != args.pairs:
            raise SystemExit(f"{r['row']}: scored {r['pairs']} of {args.pairs} pairs")
        r["rate"] = r["pairs"] / r["seconds"]
    local = {r["cores"]: r["rate"] for r in results if r["row"].startswith("local")}
    ray = {r["cores"]: r["rate"] for r in results if r["row"].startswith("ray")}
    print(f"\nmachine: {cpu_info()}; date {date.today()}; {args.pairs} pairs, chunk {args.chunk_size}, "
          f"bundle {args.bundle}\n")
    print("| row | cores | wall s | pairs/s | vs local at equal cores | time split (share of wall) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        ratio = f"{r['rate'] / local[r['cores']]:.2f}x" if r["row"].startswith("ray") else "-"
        split = ", ".join(f"{k} {v:.0f}%" for k, v in r["split"].items())
        print(f"| {r['row']} | {r['cores']} | {r['seconds']:.1f} | {r['rate']:.0f} | {ratio} | {split} |")
    print(f"\nRay 2 workers / 1 worker: {ray[2] / ray[1]:.2f}x (target >= 1.7x); local 2 threads / 1 thread: "
          f"{local[2] / local[1]:.2f}x")
    (out / "results.json").write_text(json.dumps({"machine": cpu_info(), "date": str(date.today()),
                                                   "pairs": args.pairs, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
