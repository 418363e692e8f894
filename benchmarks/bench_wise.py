"""WiSE-FT under genre shift on STS-B: train on two genres, sweep α, test on the third.

For each endpoint recipe and each held-out genre (captions, news, forum): train the fine-tuned
endpoint on the two other genres with model selection on their dev rows (the cross-encoder's head
starts from its linear probe, LP-FT, which is its α = 0), then sweep α with ``toolkit.robustness.wise`` on the
default grid (0.05 steps), in weight space and as the output-space ensemble. α is chosen three ways,
each reported: on ID dev in weight space (the documented default), on ID dev for the ensemble, and on
the held-out genre's dev rows (``--choose-on``: what a user with a little shifted data can do). Every
choice is judged on rows it never saw: the ID test rows and the held-out genre's test rows (OOD).

    python benchmarks/bench_wise.py --out runs/bench-wise [--endpoints bi bi-cosent cross] [--held news ...]

Finished training runs and sweeps in OUT are read back, so a killed benchmark picks up where it was.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import cpu_info  # noqa: E402
from toolkit.common.atomic_io import write_text  # noqa: E402
from toolkit.model.config import ModelConfig  # noqa: E402
from toolkit.robustness.genre_shift import HELD_OUT, write_genre_shift  # noqa: E402
from toolkit.sources import SourceOptions, resolve_data_spec  # noqa: E402
from toolkit.training.config import TrainConfig  # noqa: E402
from toolkit.training.loop import train  # noqa: E402
from toolkit.training.run_data import DataConfig  # noqa: E402
from toolkit.robustness.wise import RESULTS, EvalSet, WiseConfig, choose_alpha, wise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the fine-tuned endpoint's recipe: (model options, training options); the default adapter (seq_bn) throughout
ENDPOINTS = {
    "bi": ({"arch": "bi"}, {}),
    "bi-cosent": ({"arch": "bi"}, {"loss": "cosent"}),
    "cross": ({"arch": "cross"}, {"head_init": "lp"}),
    "cross-mean": ({"arch": "cross", "pooling": "mean"}, {"head_init": "lp"}),
}
# (label, set α is chosen on, mode)
RULES = (("ID dev, weights", "id-dev", "weights"), ("ID dev, outputs", "id-dev", "outputs"),
         ("OOD dev, weights", "ood-dev", "weights"))


def run_one(endpoint: str, held: str, splits: Path, out: Path) -> dict:
    folder = splits / f"heldout-{held}"
    files = resolve_data_spec(f"stsb:{folder}")
    run_dir = out / "runs" / f"{endpoint}-{held}"
    mc, tc = ENDPOINTS[endpoint]
    t = time.time()
    train(run_dir, DataConfig(str(files["train"]), str(files["dev"]), SourceOptions()), ModelConfig(**mc),
          TrainConfig(**tc), resume_if_exists=True)
    trained = time.time() - t
    sets = [EvalSet("id-dev", str(files["dev"]), "id"), EvalSet("id-test", str(files["test"]), "test"),
            EvalSet("ood-dev", str(folder / "sts-ood-dev.csv"), "ood"),
            EvalSet("ood-test", str(folder / "sts-ood-test.csv"), "ood")]
    done = out / "wise" / f"{endpoint}-{held}"
    t = time.time()
    if (done / "config.json").is_file() and (done / RESULTS).is_file():  # swept already: report it
        records = [json.loads(line) for line in (done / RESULTS).read_text().splitlines()]
    else:
        records = wise(run_dir, done, sets, SourceOptions(), WiseConfig(), choose=True, overwrite=True,
                       say=lambda line: print(line, flush=True)).records
    return {"endpoint": endpoint, "held": held, "records": records, "train_s": trained, "sweep_s": time.time() - t}


def _get(records: list[dict], alpha: float, name: str, mode: str = "weights") -> Optional[float]:
    """Spearman at α on a set; None where undefined (a probe that predicts one constant)."""
    return next(r["spearman"] for r in records if r["alpha"] == alpha and r["set"] == name and r["mode"] == mode)


def _minus(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _pct(value: Optional[float], sign: str = "") -> str:
    return "n/a" if value is None else f"{100 * value:{sign}.2f}"


def judged(r: dict) -> list[dict]:
    """Per rule: the chosen α, its ID test and OOD test Spearman, both endpoints', its OOD margin over the
    better endpoint and its ID change against the fine-tuned one (α = 1)."""
    rec, rows = r["records"], []
    ends = {a: (_get(rec, a, "id-test"), _get(rec, a, "ood-test")) for a in (0.0, 1.0)}
    for label, on, mode in RULES:
        a = choose_alpha(rec, on=on, mode=mode)
        id_test, ood = _get(rec, a, "id-test", mode), _get(rec, a, "ood-test", mode)
        better = max((e[1] for e in ends.values() if e[1] is not None), default=None)
        rows.append({"rule": label, "alpha": a, "id_test": id_test, "ood_test": ood, "ends": ends,
                     "ood_margin": _minus(ood, better), "id_delta": _minus(id_test, ends[1.0][0])})
    return rows


def report(results: list[dict]) -> str:
    lines = ["| endpoint | held-out | α chosen on, mode | α | ID test | OOD test | α=0 ID / OOD | α=1 ID / OOD | "
             "OOD vs better end | ID vs α=1 |", "|---|---|---|---:|---:|---:|---|---|---:|---:|"]
    for r in results:
        for j in judged(r):
            (i0, o0), (i1, o1) = j["ends"][0.0], j["ends"][1.0]
            lines.append(f"| {r['endpoint']} | {r['held']} | {j['rule']} | {j['alpha']:g} | {_pct(j['id_test'])} | "
                         f"{_pct(j['ood_test'])} | {_pct(i0)} / {_pct(o0)} | {_pct(i1)} / {_pct(o1)} | "
                         f"{_pct(j['ood_margin'], '+')} | {_pct(j['id_delta'], '+')} |")
    lines += ["", "Target (bi): chosen α beats both endpoints on OOD by ≥ 0.5 with ≤ 0.5 ID loss, in ≥ 2 of 3 genres."]
    for r in results:
        lines += ["", f"#### {r['endpoint']}, held-out {r['held']}: Spearman ×100 along α (weights | outputs)", "",
                  "| α | ID dev | ID test | OOD dev | OOD test | ens. ID test | ens. OOD test |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for a in dict.fromkeys(x["alpha"] for x in r["records"]):
            cells = [_get(r["records"], a, s) for s in ("id-dev", "id-test", "ood-dev", "ood-test")]
            cells += [_get(r["records"], a, s, "outputs") for s in ("id-test", "ood-test")]
            lines.append(f"| {a:g} | " + " | ".join(_pct(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stsb", default=str(ROOT.parent / "shared" / "data" / "stsb"))
    p.add_argument("--out", default="runs/bench-wise")
    p.add_argument("--endpoints", nargs="+", default=["bi", "cross"], choices=list(ENDPOINTS))
    p.add_argument("--held", nargs="+", default=list(HELD_OUT), choices=HELD_OUT)
    args = p.parse_args()
    out = Path(args.out)
    write_genre_shift(args.stsb, out / "splits")
    results = []
    for endpoint in args.endpoints:
        for held in args.held:
            results.append(run_one(endpoint, held, out / "splits", out))
            write_text(out / "results.json", json.dumps(results, indent=1))
    text = report(results) + f"\nmachine: {cpu_info()}; date {time.strftime('%Y-%m-%d')}\n"
    print(text)
    write_text(out / "report.md", text)


if __name__ == "__main__":
    main()
