"""WiSE-FT under genre shift on STS-B: train on two genres, sweep α, test on the third.

For each architecture (bi, cross) and each held-out genre (captions, news, forum): train the default
adapter (seq_bn; the cross-encoder's head starts from its linear probe, LP-FT) on the two other
genres with model selection on their dev rows, then sweep α with ``toolkit.wise``: the ID dev rows
choose α (the documented rule), the ID test rows and the held-out genre's rows are reported.
Prints one table per architecture and a summary, and writes them to OUT/report.md.

    python benchmarks/bench_wise.py --out runs/bench-wise                  # ~1 h on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from toolkit.io_utils import write_text
from toolkit.model import ModelConfig
from toolkit.shift import HELD_OUT, write_genre_shift
from toolkit.sources import SourceOptions, resolve_data_spec
from toolkit.train import DataConfig, TrainConfig, train
from toolkit.wise import EvalSet, WiseConfig, wise

ROOT = Path(__file__).resolve().parents[1]


def run_one(arch: str, held: str, splits: Path, out: Path, alphas: list[float]) -> dict:
    folder = splits / f"heldout-{held}"
    files = resolve_data_spec(f"stsb:{folder}")
    run_dir = out / "runs" / f"{arch}-{held}"
    if not (run_dir / "metrics.json").is_file():
        t = time.time()
        train(run_dir, DataConfig(str(files["train"]), str(files["dev"]), SourceOptions()),
              ModelConfig(arch=arch), TrainConfig(head_init="lp" if arch == "cross" else "random"), overwrite=True)
        print(f"trained {run_dir} in {time.time() - t:.0f}s", flush=True)
    sets = [EvalSet("id-dev", str(files["dev"]), "id"), EvalSet("id-test", str(files["test"]), "test"),
            EvalSet(f"ood-{held}", str(folder / "sts-ood.csv"), "ood")]
    done = out / "wise" / f"{arch}-{held}"
    if (done / "config.json").is_file() and (done / "results.jsonl").is_file():  # swept already: report it
        records = [json.loads(line) for line in (done / "results.jsonl").read_text().splitlines()]
        return {"arch": arch, "held": held, "records": records,
                "chosen": json.loads((done / "config.json").read_text())["wise"]["alpha"], "seconds": None}
    t = time.time()
    result = wise(run_dir, out / "wise" / f"{arch}-{held}", sets, SourceOptions(), WiseConfig(alphas=alphas),
                  choose=True, overwrite=True, say=lambda line: print(line, flush=True))
    return {"arch": arch, "held": held, "records": result.records, "chosen": result.chosen,
            "seconds": time.time() - t}


def _get(records: list[dict], alpha: float, role: str) -> float:
    return next(r["spearman"] for r in records if r["alpha"] == alpha and r["role"] == role)


def report(results: list[dict], alphas: list[float]) -> str:
    lines = []
    for arch in dict.fromkeys(r["arch"] for r in results):
        rows = [r for r in results if r["arch"] == arch]
        start = "linear probe" if arch == "cross" else "zero-shot"
        lines += [f"### --arch {arch} (seq_bn; α = 0: {start}, α = 1: fine-tuned), Spearman ×100, ID test / OOD", "",
                  "| α | " + " | ".join(f"held-out {r['held']}: ID / OOD" for r in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        for a in alphas:
            cells = []
            for r in rows:
                mark = " ←" if a == r["chosen"] else ""
                id_test, ood = (100 * _get(r["records"], a, role) for role in ("test", "ood"))
                cells.append(f"{id_test:.2f} / {ood:.2f}{mark}")
            lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### chosen α (on ID dev only) against both endpoints", "",
              "| arch | held-out | chosen α | ID test Δ vs α=1 | OOD chosen | OOD α=0 | OOD α=1 | beats both on OOD | "
              "ID loss ≤ 0.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["chosen"]
        id_delta = 100 * (_get(r["records"], a, "test") - _get(r["records"], 1.0, "test"))
        ood = [100 * _get(r["records"], x, "ood") for x in (a, 0.0, 1.0)]
        beats = ood[0] > ood[1] and ood[0] > ood[2]
        lines.append(f"| {r['arch']} | {r['held']} | {a:g} | {id_delta:+.2f} | {ood[0]:.2f} | {ood[1]:.2f} | "
                     f"{ood[2]:.2f} | {'yes' if beats else 'no'} | {'yes' if id_delta >= -0.5 else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stsb", default=str(ROOT.parent / "shared" / "data" / "stsb"))
    p.add_argument("--out", default="runs/bench-wise")
    p.add_argument("--archs", nargs="+", default=["bi", "cross"])
    p.add_argument("--held", nargs="+", default=list(HELD_OUT), choices=HELD_OUT)
    args = p.parse_args()
    out = Path(args.out)
    alphas = [round(0.1 * i, 10) for i in range(11)]
    write_genre_shift(args.stsb, out / "splits")
    results = [run_one(arch, held, out / "splits", out, alphas) for arch in args.archs for held in args.held]
    text = report(results, alphas)
    text += (f"\nmachine: {platform.processor() or platform.machine()}, {platform.node()}; "
             f"date {time.strftime('%Y-%m-%d')}\n")
    print(text)
    write_text(out / "report.md", text)
    write_text(out / "results.json", json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
