"""Fuzz every pair reader and ``toolkit check`` with many cases and count the defects (target: 0).

The same generators and oracle as tests/test_fuzz_sources.py (tests/source_fuzz.py), run for far
more cases than CI can: arbitrary bytes, mutated seeds from tests/corpus and generated tables, in
every format. A defect is any outcome other than pairs, a report of problems, or one clean error
line naming the file (and line or row). Each defect is printed with the seed that replays it:
``python benchmarks/fuzz_sources.py --replay SEED``. ``--names``: cases whose names are odd instead
(header fields, JSON keys, columns, nested fields, SQLite tables, data files; datasets folders too),
held also to reading the one column each needed name finds (``source_fuzz.named_outcome``).

    python benchmarks/fuzz_sources.py --cases 10000 --out runs/fuzz
    python benchmarks/fuzz_sources.py --names --cases 3000 --out runs/fuzz-names
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import source_fuzz  # noqa: E402


def run_case(seed: int, folder: Path, names: bool = False) -> tuple[str, str, str]:
    """(format, outcome or 'defect', defect message)."""
    rng = random.Random(seed)
    case_dir = folder / str(seed)
    case_dir.mkdir()
    if names:
        named = source_fuzz.named_case(rng, case_dir)
        fmt = "datasets" if named.path.is_dir() else named.path.suffix
        check = lambda: source_fuzz.named_outcome(named)  # noqa: E731
    else:
        path = source_fuzz.case(rng, case_dir)
        fmt = path.suffix
        check = lambda: source_fuzz.outcome(path)  # noqa: E731
    try:
        return fmt, check(), ""
    except source_fuzz.Defect as e:
        return fmt, "defect", str(e)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--replay", type=int, help="run one case and print its outcome")
    parser.add_argument("--names", action="store_true", help="cases whose names are odd (source_fuzz.named_case)")
    parser.add_argument("--out", help="folder for results.json")
    args = parser.parse_args()

    if args.replay is not None:
        with tempfile.TemporaryDirectory() as folder:
            print(run_case(args.replay, Path(folder), args.names))
        return
    counts: collections.Counter = collections.Counter()
    defects: list[tuple[int, str]] = []
    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.first_seed, args.first_seed + args.cases):
            fmt, result, message = run_case(seed, Path(folder), args.names)
            counts[(fmt, result)] += 1
            if message:
                defects.append((seed, message))
                print(f"defect (seed {seed}): {message[:300]}", file=sys.stderr)
            if (seed - args.first_seed + 1) % 1000 == 0:
                done = seed - args.first_seed + 1
                rate = done / (time.time() - start)
                print(f"{done}/{args.cases} cases, {rate:.0f}/s, ETA {(args.cases - done) / rate:.0f}s, "
                      f"{len(defects)} defects", file=sys.stderr)
    seconds = time.time() - start

    formats = sorted({f for f, _ in counts})
    print("| format | cases | pairs | problems reported | one-line error | defects |")
    print("|---|---:|---:|---:|---:|---:|")
    for fmt in formats + ["all"]:
        row = {r: sum(n for (f, rr), n in counts.items() if rr == r and fmt in (f, "all"))
               for r in ("pairs", "report", "error", "defect")}
        print(f"| {fmt} | {sum(row.values())} | {row['pairs']} | {row['report']} | {row['error']} | {row['defect']} |")
    print(f"\n{args.cases} cases (seeds {args.first_seed}..{args.first_seed + args.cases - 1}) in {seconds:.0f}s; "
          f"{len(defects)} defects; {cpu_model()}; {datetime.date.today()}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({
            "cases": args.cases, "first_seed": args.first_seed, "names": args.names, "seconds": seconds,
            "defects": defects,
            "counts": {f"{f} {r}": n for (f, r), n in sorted(counts.items())}}, indent=2))


if __name__ == "__main__":
    main()
