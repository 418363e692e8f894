"""Distillation on STS-B: a teacher's test figure, and the distilled MiniLM student over several seeds.

The first seed's `toolkit distill` asks the teacher for the silver labels; the other seeds' folders get
the same label files (hard links: same teacher, gold pairs and settings, so `distill` reads them back)
and run two at a time at one thread each. Each student is selected on gold dev; test is scored once.

    python benchmarks/bench_distill.py --teacher RUN --out runs/bench-distill --silver-pairs 10000 \\
        --seeds 1 2 3 [--epochs 2] [-- other train options]

Finished students are read back (the same command reruns nothing), so a killed benchmark resumes.
Prints a table (mean ± std over seeds) and writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "stsb"


def distill_cmd(args, seed: int) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", "distill", "--data", f"stsb:{args.stsb}", "--teacher", args.teacher,
            "--silver-pairs", str(args.silver_pairs), "--neighbour-share", str(args.neighbour_share),
            "--epochs", str(args.epochs), "--seed", str(seed), "--out", str(args.out / f"seed-{seed}"), "--quiet",
            *(["--silver-share", str(args.silver_share)] if args.silver_share else []), *args.train_args]


def run(args, seeds: list[int], threads: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    procs = []
    for seed in seeds:
        log = open(args.out / f"seed-{seed}.log", "a")
        procs.append((seed, subprocess.Popen(distill_cmd(args, seed), env=env, stdout=log, stderr=log), log))
    for seed, proc, log in procs:
        proc.wait()
        log.close()
        if proc.returncode != 0:
            sys.exit(f"seed {seed} failed: see {args.out / f'seed-{seed}.log'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stsb", default=str(STSB))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--silver-pairs", type=int, default=10000)
    ap.add_argument("--neighbour-share", type=float, default=0.5)
    ap.add_argument("--silver-share", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=2, help="students trained at once, one thread each")
    ap.add_argument("train_args", nargs="*", help="after --: more train options for the student")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    first, rest = args.seeds[0], args.seeds[1:]
    run(args, [first], threads=os.cpu_count() or 1)  # asks the teacher for the labels
    for seed in rest:  # the same labels: read back, not asked again
        folder = args.out / f"seed-{seed}"
        folder.mkdir(exist_ok=True)
        for f in (args.out / f"seed-{first}").glob("silver-*"):
            if not (folder / f.name).exists():
                os.link(f, folder / f.name)
    for i in range(0, len(rest), args.parallel):
        run(args, rest[i:i + args.parallel], threads=1)
    found = {s: json.loads((args.out / f"seed-{s}" / "distill.json").read_text()) for s in args.seeds}
    student = [100 * found[s]["student"]["test"]["spearman"] for s in args.seeds]
    dev = [100 * found[s]["student"]["dev"]["spearman"] for s in args.seeds]
    teacher = 100 * found[first]["teacher"]["test"]["spearman"]
    params = json.loads((args.out / f"seed-{first}" / "student" / "metrics.json").read_text()).get("params", {})
    silver = found[first]["silver"]
    sd = statistics.stdev(student) if len(student) > 1 else float("nan")
    results = {"date": str(date.today()), "machine": cpu_info(), "command": " ".join(sys.argv),
               "teacher": args.teacher, "teacher_test_spearman": teacher, "silver": silver,
               "student_test_spearman": dict(zip(args.seeds, student)),
               "student_dev_spearman": dict(zip(args.seeds, dev)),
               "student_test_mean": statistics.mean(student), "student_test_std": sd, "params": params,
               "wall_s": round(time.time() - t)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"| model | STS-B test Spearman | dev | seeds |\n|---|---|---|---|\n"
          f"| teacher ({Path(args.teacher).name}) | {teacher:.2f} | | 1 |\n"
          f"| student, {silver['used']} silver pairs | {statistics.mean(student):.2f} ± {sd:.2f} | "
          f"{statistics.mean(dev):.2f} | {len(student)} |")
    print(f"per seed: {', '.join(f'{s}: {v:.2f}' for s, v in zip(args.seeds, student))}; "
          f"machine: {cpu_info()}; {results['wall_s']} s")


if __name__ == "__main__":
    main()
