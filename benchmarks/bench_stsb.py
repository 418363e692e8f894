"""STS-B accuracy per parameter: train each (architecture, adapter) on STS-B train with several seeds,
select each run's epoch on dev, report test once per run. Prints a markdown table of mean ± std over
the seeds (and writes every run as JSON).

    python benchmarks/bench_stsb.py [--stsb ../shared/data/stsb] [--out runs/bench] [--only bi-seq_bn ...]
                                    [--seeds 1 2 3]

One seed is inside the noise (seeds move test Spearman by tenths of a point), so a row is only
compared with another by its mean over >= 3 seeds. A run directory that already holds a finished run
of the same settings is read back instead of retrained (a killed benchmark picks up where it was).

Hyperparameters per row were chosen on STS-B dev only (benchmarks/RESULTS.md lists the sweep).
The zero-shot row is the pre-trained bi-encoder itself (the adapter at its identity init).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_info  # noqa: E402
from toolkit import __version__  # noqa: E402
from toolkit.model.batching import PairTokenizer  # noqa: E402
from toolkit.model.label_scale import LabelScale  # noqa: E402
from toolkit.model.safe_loading import load_tokenizer, resolve_model  # noqa: E402
from toolkit.scoring.metrics import evaluate_predictions, mean_std  # noqa: E402
from toolkit.model.config import ModelConfig  # noqa: E402
from toolkit.model.regressor import PairRegressor  # noqa: E402
from toolkit.scoring.torch_engine import Predictor  # noqa: E402
from toolkit.training.run_dir import load_run  # noqa: E402
from toolkit.sources import SourceOptions, read_pairs, resolve_data_spec  # noqa: E402
from toolkit.training.config import TrainConfig  # noqa: E402
from toolkit.training.loop import train  # noqa: E402
from toolkit.training.run_data import DataConfig  # noqa: E402
from toolkit.common.atomic_io import write_text  # noqa: E402

# name: (model config, train config). "bi-seq_bn" is the toolkit's default.
CONFIGS = {
    "bi-seq_bn": ({"arch": "bi", "adapter": "seq_bn"}, {}),
    "bi-seq_bn-cosent": ({"arch": "bi", "adapter": "seq_bn"}, {"loss": "cosent"}),
    "bi-lora": ({"arch": "bi", "adapter": "lora"}, {"lr": 1e-3}),
    "bi-none": ({"arch": "bi", "adapter": "none"}, {"lr": 2e-5}),
    "cross-seq_bn": ({"arch": "cross", "adapter": "seq_bn"}, {"lr": 1e-3}),
    "cross-seq_bn-lp": ({"arch": "cross", "adapter": "seq_bn"}, {"lr": 1e-3, "head_init": "lp"}),
    "cross-lora": ({"arch": "cross", "adapter": "lora"}, {"lr": 2e-3, "epochs": 8}),
    "cross-none": ({"arch": "cross", "adapter": "none"}, {"lr": 5e-5}),
}


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_info()}, {gpu}; torch {torch.__version__}, toolkit {__version__}"


def run_one(name: str, seed: int, stsb: dict, out: Path) -> dict:
    mc, tc = CONFIGS[name]
    folder = out / f"{name}-s{seed}"
    done = folder / "result.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if (row["model"], row["train"]) == (mc, tc):
            return row
    data = DataConfig(str(stsb["train"]), str(stsb["dev"]), SourceOptions())
    start = time.time()
    result = train(folder, data, ModelConfig(**mc), TrainConfig(**{**tc, "seed": seed}), overwrite=True)
    wall = time.time() - start
    row = {"name": name, "seed": seed, **score_test_split(load_run(folder).predictor(), stsb),
           "dev_spearman": result.summary["dev"]["spearman"],
           "best_epoch": result.summary["best_epoch"], "params": result.summary["params"], "wall_s": wall,
           "model": mc, "train": tc}
    write_text(done, json.dumps(row, indent=2))
    return row


def aggregate(runs: list[dict]) -> dict:
    """One table row from a configuration's runs: mean and (sample) std over seeds."""
    def stats(key: str) -> tuple[float, float]:
        return mean_std([r[key] for r in runs])

    first = runs[0]
    return {"name": first["name"], "seeds": [r.get("seed") for r in runs], "params": first["params"],
            "test_spearman": stats("test_spearman"), "test_pearson": stats("test_pearson"),
            "test_mse": stats("test_mse"),
            "dev_spearman": stats("dev_spearman") if first["dev_spearman"] is not None else None,
            "best_epochs": [r["best_epoch"] for r in runs], "wall_s": statistics.fmean(r["wall_s"] for r in runs),
            "per_seed_test": [r["test_spearman"] for r in runs]}


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
    def pm(pair, scale: float = 100, digits: int = 2) -> str:
        return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}"

    lines = ["| config | trainable params | seeds | test Spearman | per seed | test Pearson | test MSE | dev Spearman "
             "| best epochs | wall / run |", "|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        dev = pm(r["dev_spearman"]) if r["dev_spearman"] is not None else "-"
        lines.append(
            f"| {r['name']} | {r['params']['trainable']:,} ({r['params']['percent']:.2f}%) | {len(r['seeds'])} | "
            f"{pm(r['test_spearman'])} | {', '.join(f'{100 * v:.2f}' for v in r['per_seed_test'])} | "
            f"{pm(r['test_pearson'])} | {pm(r['test_mse'], 1, 3)} | {dev} | "
            f"{', '.join(map(str, r['best_epochs']))} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stsb", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb"))
    p.add_argument("--out", default="runs/bench")
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), help="run only these rows")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="one run per seed (>= 3 for a figure)")
    p.add_argument("--json", default=None, help="write the rows here (default: OUT/results.json)")
    args = p.parse_args()
    stsb = resolve_data_spec(f"stsb:{args.stsb}")
    out = Path(args.out)
    header = f"{datetime.date.today()} | {machine()}"
    zero = zero_shot(stsb)
    rows, runs = [aggregate([zero])], [zero]
    for name in args.only or CONFIGS:
        mine = [run_one(name, seed, stsb, out) for seed in args.seeds]
        runs += mine
        rows.append(aggregate(mine))
        print(table(rows), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text(Path(args.json) if args.json else out / "results.json",
               json.dumps({"machine": header, "seeds": args.seeds, "rows": rows, "runs": runs}, indent=2))
    print(f"\nSTS-B test, trained on train, selected on dev; {header}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
