"""Accuracy against speed: each model's STS-B test Spearman (PyTorch and its int8 bundle) beside the
pairs/s of that int8 bundle through ``toolkit score`` on this CPU, all in one run.

    python benchmarks/bench_pareto.py --model default=runs/stsb-seqbn --model teacher=runs/teacher \
        --out runs/bench-pareto [--pairs 6000 --repeats 3 --threads 2]

For each model (a run or merged folder): its trainable and total parameters (the run's metrics.json),
its STS-B test Spearman in PyTorch (``toolkit.evaluate``), the default int8 bundle (``toolkit export
--onnx --quantize int8``, gated on STS-B dev; exported once, kept in OUT; where the gate refuses int8, the
fp32 bundle, and the table says so), that bundle's test Spearman,
and ``toolkit score`` of bench_score.py's pairs file (STS-B test's pairs, then first sentences paired
with other test sentences) with ONNX Runtime, the median of ``--repeats`` timed runs after the test
file's (a warm-up).
Speed is given as a ratio to the first model. Prints a table and writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.parquet as pq  # noqa: E402
from bench_score import STSB, gated_bundle, spearman, timed, write_pairs  # noqa: E402
from machine_info import cpu_info  # noqa: E402

import toolkit  # noqa: E402
from toolkit.artifacts.onnx_export import ExportConfig  # noqa: E402
from toolkit.batch.config import ScoreConfig  # noqa: E402
from toolkit.batch.stream import score_file  # noqa: E402
from toolkit.sources import Columns, SourceOptions, read_pairs  # noqa: E402


def bundle_of(name: str, model: str, out: Path, args) -> tuple[Path, str]:
    """The model's int8 bundle; where the export gate refuses int8, its fp32 bundle and the reason."""
    cfg = ExportConfig(quantize="int8", verify_data=str(STSB / "sts-dev.csv"), threads=args.threads)
    int8 = gated_bundle(model, out / "int8", cfg, f"[{name}] ")
    if isinstance(int8, Path):
        return int8, ""
    fp32 = gated_bundle(model, out / "fp32", dataclasses.replace(cfg, quantize=None), f"[{name}] ")
    if isinstance(fp32, str):
        raise SystemExit(f"{model}: no bundle passed the export gate: {fp32}")
    return fp32, int8


def measure(name: str, model: str, args, data: Path, n: int) -> dict:
    out = args.out / name
    test = STSB / "sts-test.csv"
    gold, _ = read_pairs(test, SourceOptions())
    metrics = Path(model) / "metrics.json"
    params = json.loads(metrics.read_text()).get("params", {}) if metrics.exists() else {}
    pytorch = 100 * toolkit.evaluate(model, str(test))["spearman"]
    bundle, refused = bundle_of(name, model, out, args)
    options = SourceOptions(columns=Columns(id_col="id"), need_score=False)
    cfg = ScoreConfig(threads=args.threads, batch_size=args.batch_size, restart=True, progress=False,
                      runtime="onnxruntime")
    # the test file first: its Spearman, and the warm-up of the timed runs (the first session, first imports)
    score_file(str(bundle), str(test), str(out / "test.parquet"), SourceOptions(need_score=False), cfg)
    int8 = spearman(pq.read_table(out / "test.parquet").column("score").to_numpy(), gold.scores)
    seconds = timed(lambda: score_file(str(bundle), str(data), str(out / "scores.parquet"), options, cfg),
                    args.repeats)
    row = {"name": name, "model": model, "params": params, "test_pytorch": pytorch, "variant": bundle.name,
           "int8_refused": refused, "test_bundle": int8, "pairs_per_s": n / seconds,
           "bundle_mib": (bundle / "model.onnx").stat().st_size / 2 ** 20}
    print(f"[{name}] PyTorch {pytorch:.2f}, {bundle.name} bundle {int8:.2f}, {row['pairs_per_s']:.0f} pairs/s"
          + (f" (int8 refused: {refused})" if refused else ""), file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=PATH (repeat; the first is the base)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-pareto"))
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    gold, _ = read_pairs(STSB / "sts-test.csv", SourceOptions())
    data = args.out / "pairs.parquet"
    write_pairs(data, list(gold.s1), list(gold.s2), args.pairs)
    rows = [measure(name, model, args, data, args.pairs) for name, model in (m.split("=", 1) for m in args.model)]
    base = rows[0]["pairs_per_s"]
    lines = ["| model | trainable / total parameters | STS-B test (PyTorch) | bundle | its test | pairs/s | "
             f"x {rows[0]['name']} |", "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        p = r["params"]
        share = f"{p['trainable']:,} / {p['total']:,}" if p else "-"
        variant = r["variant"] + (" (int8 refused by the gate)" if r["int8_refused"] else "")
        lines.append(f"| {r['name']} | {share} | {r['test_pytorch']:.2f} | {variant} | {r['test_bundle']:.2f} | "
                     f"{r['pairs_per_s']:.0f} | {r['pairs_per_s'] / base:.2f} |")
    print("\n".join(lines))
    print(f"{args.pairs} pairs, {args.threads} threads, batch {args.batch_size}, median of {args.repeats}; "
          f"machine: {cpu_info()}; {date.today()}")
    (args.out / "results.json").write_text(json.dumps({"date": str(date.today()), "machine": cpu_info(),
                                                       "command": " ".join(sys.argv), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
