"""STS-B accuracy per parameter: train each (architecture, adapter) on STS-B train, select on dev,
report test once. Prints a markdown table (and writes the rows as JSON).

    python benchmarks/bench_stsb.py [--stsb ../shared/data/stsb] [--out runs/bench] [--only bi-seq_bn ...]

Hyperparameters per row were chosen on STS-B dev only (benchmarks/RESULTS.md lists the sweep).
The zero-shot row is the pre-trained bi-encoder itself (the adapter at its identity init).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from toolkit import __version__
from toolkit.batching import PairTokenizer
from toolkit.labels import LabelScale
from toolkit.loading import load_tokenizer, resolve_model
from toolkit.metrics import evaluate_predictions
from toolkit.model import ModelConfig, PairRegressor
from toolkit.predict import Predictor
from toolkit.run import load_run
from toolkit.sources import SourceOptions, read_pairs, resolve_data_spec
from toolkit.train import DataConfig, TrainConfig, train

# name: (model config, train config). "bi-seq_bn" is the toolkit's default.
CONFIGS = {
    "bi-seq_bn": ({"arch": "bi", "adapter": "seq_bn"}, {}),
    "bi-lora": ({"arch": "bi", "adapter": "lora"}, {"lr": 1e-3}),
    "bi-none": ({"arch": "bi", "adapter": "none"}, {"lr": 2e-5}),
    "cross-seq_bn": ({"arch": "cross", "adapter": "seq_bn"}, {"lr": 1e-3}),
    "cross-lora": ({"arch": "cross", "adapter": "lora"}, {"lr": 2e-3, "epochs": 8}),
    "cross-none": ({"arch": "cross", "adapter": "none"}, {"lr": 5e-5}),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, toolkit {__version__}"


def run_one(name: str, stsb: dict, out: Path) -> dict:
    mc, tc = CONFIGS[name]
    data = DataConfig(str(stsb["train"]), str(stsb["dev"]), SourceOptions())
    start = time.time()
    result = train(out / name, data, ModelConfig(**mc), TrainConfig(**tc), overwrite=True)
    wall = time.time() - start
    return {"name": name, **score_test_split(load_run(out / name).predictor(), stsb),
            "dev_spearman": result.summary["dev"]["spearman"],
            "best_epoch": result.summary["best_epoch"], "params": result.summary["params"], "wall_s": wall,
            "model": mc, "train": tc}


def score_test_split(predictor: Predictor, stsb: dict) -> dict:
    test, _ = read_pairs(stsb["test"])
    m, _ = evaluate_predictions(predictor.predict(test.s1, test.s2), test.scores, test.groups)
    return {"test_spearman": m["spearman"], "test_spearman_ci95": m["spearman_ci95"],
            "test_pearson": m["pearson"], "test_mse": m["mse"]}


def zero_shot(stsb: dict) -> dict:
    """The pre-trained bi-encoder, untouched (a fresh identity adapter is exactly it)."""
    cfg = ModelConfig(arch="bi")
    _, folder = resolve_model(cfg.base_model)
    tokens = PairTokenizer(load_tokenizer(folder), "bi", cfg.max_length)
    predictor = Predictor(PairRegressor.create(cfg, folder), tokens, LabelScale.from_range(0, 5))
    return {"name": "zero-shot (bi, no training)", **score_test_split(predictor, stsb), "dev_spearman": None,
            "best_epoch": 0, "params": {"trainable": 0, "percent": 0.0}, "wall_s": 0.0}


def table(rows: list[dict]) -> str:
    lines = ["| config | trainable params | test Spearman (95% CI) | test Pearson | test MSE | dev Spearman "
             "| best epoch | wall time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = r["test_spearman_ci95"]
        dev = f"{100 * r['dev_spearman']:.2f}" if r["dev_spearman"] is not None else "-"
        lines.append(
            f"| {r['name']} | {r['params']['trainable']:,} ({r['params']['percent']:.2f}%) | "
            f"{100 * r['test_spearman']:.2f} ({100 * ci[0]:.1f}-{100 * ci[1]:.1f}) | {100 * r['test_pearson']:.2f} | "
            f"{r['test_mse']:.3f} | {dev} | {r['best_epoch']} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stsb", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb"))
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), help="run only these rows")
    p.add_argument("--json", default=None, help="write the rows here (default: OUT/results.json)")
    args = p.parse_args()
    stsb = resolve_data_spec(f"stsb:{args.stsb}")
    out = Path(args.out)
    header = f"{datetime.date.today()} | {machine()}"
    rows = [zero_shot(stsb)]
    for name in args.only or CONFIGS:
        rows.append(run_one(name, stsb, out))
        print(table(rows), file=sys.stderr, flush=True)
    (Path(args.json) if args.json else out / "results.json").write_text(
        json.dumps({"machine": header, "rows": rows}, indent=2))
    print(f"\nSTS-B test, trained on train, selected on dev; {header}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
