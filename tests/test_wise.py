"""WiSE-FT on small trained runs: both ends against independent references (plain transformers for
the zero-shot bi-encoder, a numpy ridge fit for the cross-encoder's linear probe, a fresh load of the
run for α = 1), LoRA's exact θ0 + α·ΔW, refusals, the choice rule, the CLI, and the genre splits."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from conftest import cli_here, write_stsb_slice
from safetensors import safe_open

from toolkit.common.errors import ToolkitError
from toolkit.common.option_types import parse_alphas
from toolkit.model.config import ModelConfig
from toolkit.model.regressor import mean_pool
from toolkit.model.safe_loading import resolve_model
from toolkit.robustness.wise import EvalSet, Interpolation, WiseConfig, check_compatible, choose_alpha, wise
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.config import TrainConfig
from toolkit.training.loop import train
from toolkit.training.run_data import DataConfig
from toolkit.training.run_dir import load_run

MAX_LEN = 48


# Fine-tuning from the linear probe has to beat it on dev, or the run keeps its start (θ1 = θ0). Without
# dropout it does from the first steps at a small lr on 300 pairs; with dropout the first epoch falls below
# the probe (fitted on eval-mode features), and it took 1,000 pairs for 2 epochs at 5e-4 to recover.
CROSS_TRAIN_ROWS = 300


def _train(out: Path, train_file: Path, small_stsb, arch: str, adapter: str, limit: Optional[int] = 64,
           dropout: Optional[float] = None, **kw) -> Path:
    data = DataConfig(str(train_file), str(small_stsb["dev"]), SourceOptions(limit=limit))
    train(out, data, ModelConfig(arch=arch, adapter=adapter, max_length=MAX_LEN, dropout=dropout),
          TrainConfig(**{"epochs": 1, "batch_size": 8, "lr": 2e-3, "metric": "mse", "patience": None, **kw}))
    return out


@pytest.fixture(scope="module")
def cross_train(tmp_path_factory) -> Path:
    return write_stsb_slice(tmp_path_factory.mktemp("wise_cross") / "train.csv", "train", CROSS_TRAIN_ROWS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_stsb, cross_train) -> dict[str, Path]:
    root, tr = tmp_path_factory.mktemp("wise_runs"), small_stsb["train"]
    made = {"bi-seq_bn": _train(root / "bi-seq_bn", tr, small_stsb, "bi", "seq_bn"),
            "cross-lora": _train(root / "cross-lora", cross_train, small_stsb, "cross", "lora", limit=None,
                                 dropout=0.0, head_init="lp", lr=1e-4, epochs=2),
            "bi-none": _train(root / "bi-none", tr, small_stsb, "bi", "none", lr=5e-5),
            "bi-ia3": _train(root / "bi-ia3", tr, small_stsb, "bi", "ia3")}
    for name, folder in made.items():  # a run that kept its start would make every test below vacuous
        assert not Interpolation(load_run(folder, fused_kernel="off")).same_ends(), name
    return made


@pytest.fixture(scope="module")
def dev(small_stsb):
    pairs, _ = read_pairs(small_stsb["dev"], SourceOptions(limit=40))
    return pairs


def _base():
    from transformers import AutoTokenizer

    _, folder = resolve_model("all-MiniLM-L6-v2")
    return folder, AutoTokenizer.from_pretrained(str(folder))


@torch.inference_mode()
def _zero_shot(s1, s2) -> np.ndarray:
    """The pre-trained sentence-embedding model with plain transformers: mean pooling, cosine."""
    from transformers import AutoModel

    folder, tok = _base()
    model = AutoModel.from_pretrained(str(folder)).eval()

    def embed(texts):
        enc = tok(list(texts), padding=True, truncation=True, max_length=MAX_LEN, return_tensors="pt")
        return mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])

    return torch.nn.functional.cosine_similarity(embed(s1), embed(s2)).double().numpy()


@pytest.mark.parametrize("name", ["bi-seq_bn", "bi-none", "bi-ia3"])
def test_bi_alpha0_is_zero_shot_and_alpha1_the_run(runs, dev, name):
    run = load_run(runs[name], fused_kernel="off")
    interp = Interpolation(run)
    predictor = run.predictor()
    interp.set(0.0)
    got0 = predictor.predict_normalized(dev.s1, dev.s2)
    np.testing.assert_allclose(got0, _zero_shot(dev.s1, dev.s2), atol=2e-5)
    interp.set(1.0)
    got1 = predictor.predict(dev.s1, dev.s2)
    fresh = load_run(runs[name], fused_kernel="off").predictor().predict(dev.s1, dev.s2)
    np.testing.assert_array_equal(got1, fresh)
    interp.set(0.5)
    mid = predictor.predict(dev.s1, dev.s2)
    assert np.abs(mid - got1).max() > 1e-4 and np.abs(mid - run.labels.denormalize(got0)).max() > 1e-4


@torch.inference_mode()
def test_cross_alpha0_is_the_ridge_linear_probe(runs, cross_train, dev):
    """α = 0: the frozen pre-trained model's pooler features through a ridge fit done here with numpy."""
    from transformers import AutoModel

    run_dir = runs["cross-lora"]
    config = json.loads((run_dir / "config.json").read_text())
    penalty = config["resolved"]["linear_probe"]["penalty"]
    folder, tok = _base()
    bert = AutoModel.from_pretrained(str(folder)).eval()

    def features(pairs):
        enc = tok(list(pairs.s1), list(pairs.s2), padding=True, truncation=True, max_length=MAX_LEN,
                  return_tensors="pt")
        return bert(**enc).pooler_output.double().numpy()

    train_pairs, _ = read_pairs(cross_train)
    run = load_run(run_dir, fused_kernel="off")
    x, y = features(train_pairs), run.labels.normalize(train_pairs.scores)
    xc = x - x.mean(0)
    w = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
    b = y.mean() - x.mean(0) @ w
    with safe_open(str(run_dir / "init" / "params.safetensors"), "pt") as f:
        saved_w = f.get_tensor("encoder.heads.pair.4.weight").double().numpy()[0]
        saved_b = f.get_tensor("encoder.heads.pair.4.bias").double().numpy()[0]
    np.testing.assert_allclose(saved_w, w, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(saved_b, b, atol=1e-4)

    interp = Interpolation(run)
    interp.set(0.0)
    got = run.predictor().predict(dev.s1, dev.s2)
    np.testing.assert_allclose(got, run.labels.denormalize(features(dev) @ w + b), atol=1e-3)
    interp.set(1.0)
    fresh = load_run(run_dir, fused_kernel="off").predictor().predict(dev.s1, dev.s2)
    np.testing.assert_array_equal(run.predictor().predict(dev.s1, dev.s2), fresh)


def test_lora_interpolates_the_update_exactly(runs):
    """θ(α) = θ0 + α·ΔW for every LoRA layer (interpolating A as well would be quadratic in α)."""
    run = load_run(runs["cross-lora"], fused_kernel="off")
    layers = [m for m in run.model.modules() if hasattr(m, "loras") and "pair" in m.loras]
    assert layers
    full = [(m.loras["pair"].delta_w * m.loras["pair"].scaling).detach().clone() for m in layers]
    interp = Interpolation(run)
    for alpha in (0.0, 0.3, 0.7):
        interp.set(alpha)
        for m, delta in zip(layers, full):
            torch.testing.assert_close(m.loras["pair"].delta_w * m.loras["pair"].scaling, alpha * delta,
                                       rtol=1e-5, atol=1e-7)


def test_refuses_mismatched_runs(runs):
    a = load_run(runs["bi-seq_bn"], fused_kernel="off")
    with pytest.raises(ToolkitError, match="different arch"):
        Interpolation(a, start=load_run(runs["cross-lora"], fused_kernel="off"))
    with pytest.raises(ToolkitError, match="different adapter"):
        Interpolation(a, start=load_run(runs["bi-ia3"], fused_kernel="off"))
    other = load_run(runs["bi-seq_bn"], fused_kernel="off")
    other.config = json.loads(json.dumps(other.config))
    other.config["base_model"]["weights_sha256"] = "0" * 64
    with pytest.raises(ToolkitError, match="different base model"):
        check_compatible(a, other)
    lora = load_run(runs["cross-lora"], fused_kernel="off")
    with pytest.raises(ToolkitError, match="two LoRA runs"):
        Interpolation(lora, start=load_run(runs["cross-lora"], fused_kernel="off"))


def test_refuses_runs_without_a_start(tmp_path, runs, small_stsb):
    import shutil

    copy = tmp_path / "no-init"
    shutil.copytree(runs["bi-seq_bn"], copy)
    shutil.rmtree(copy / "init")
    with pytest.raises(ToolkitError, match="no init/params.safetensors"):
        Interpolation(load_run(copy, fused_kernel="off"))
    random_head = _train(tmp_path / "cross-random", small_stsb["train"], small_stsb, "cross", "seq_bn", epochs=1)
    with pytest.raises(ToolkitError, match="--head-init lp"):
        Interpolation(load_run(random_head, fused_kernel="off"))


def test_choice_rule_uses_id_only_and_breaks_ties_to_smaller_alpha():
    recs = [{"alpha": a, "set": "dev", "role": "id", "spearman": s} for a, s in
            [(0.0, 0.80), (0.5, 0.8495), (0.8, 0.8500), (1.0, 0.8492)]]
    recs += [{"alpha": a, "set": "shift", "role": "ood", "spearman": 0.99 if a == 0.0 else 0.5}
             for a in (0.0, 0.5, 0.8, 1.0)]
    recs += [{"alpha": a, "mode": "outputs", "set": "dev", "role": "id", "spearman": 0.9 if a == 1.0 else 0.1}
             for a in (0.0, 0.5, 0.8, 1.0)]
    assert choose_alpha(recs, tie=0.001) == 0.5
    assert choose_alpha(recs, tie=0.0) == 0.8
    assert choose_alpha(recs, on="shift") == 0.0  # chosen on the shifted set when asked: its best
    assert choose_alpha(recs, mode="outputs") == 1.0
    with pytest.raises(ToolkitError, match="--choose-on nope: no such evaluation set"):
        choose_alpha(recs, on="nope")
    mse = [{"alpha": a, "set": "dev", "role": "id", "mse": m} for a, m in [(0.0, 2.0), (0.6, 0.5), (1.0, 0.7)]]
    assert choose_alpha(mse, metric="mse", tie=0.0) == 0.6
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("1,0,0.5") == [0.0, 0.5, 1.0]
    with pytest.raises(ToolkitError, match="--alphas"):
        parse_alphas("0:1")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True)


def test_cli_sweep_choose_then_merge_and_score(tmp_path, runs, small_stsb, dev, capsys):
    out = tmp_path / "chosen"
    r = cli_here(capsys, "wise", str(runs["cross-lora"]), "--id", f"dev={small_stsb['dev']}", "--ood",
                 f"shift={small_stsb['test']}", "--alphas", "0:1:0.5", "--choose", "--out", str(out), "--quiet")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    want = [(m, a, s) for m in ("weights", "outputs") for a in (0.0, 0.5, 1.0) for s in ("dev", "shift")]
    assert [(rec["mode"], rec["alpha"], rec["set"]) for rec in records] == want
    assert {"mse", "rmse", "mae", "pearson", "spearman", "n"} <= records[0].keys()
    assert (out / "wise.png").stat().st_size > 10_000
    alpha = json.loads((out / "config.json").read_text())["wise"]["alpha"]
    assert alpha == choose_alpha(records)
    assert "<- chosen" in r.stdout and "every α gives the same model" not in r.stdout

    source = load_run(runs["cross-lora"], fused_kernel="off")
    Interpolation(source).set(alpha)
    want = source.predictor().predict(dev.s1, dev.s2)
    np.testing.assert_allclose(load_run(out, fused_kernel="off").predictor().predict(dev.s1, dev.s2), want, atol=1e-5)

    cli_here(capsys, "merge", str(out), "--out", str(tmp_path / "merged"))
    scores = tmp_path / "scores.jsonl"
    r = _cli("score", str(out), str(small_stsb["dev"]), "-o", str(scores), "--limit", "40", "--quiet")
    assert r.returncode == 0, r.stderr  # a process of its own: the chosen run loads from its folder alone
    got = [json.loads(line)["score"] for line in scores.read_text().splitlines()]
    np.testing.assert_allclose(got, want, atol=1e-4)

    r = cli_here(capsys, "wise", str(runs["bi-seq_bn"]), "--choose-on", "elsewhere", "--out", str(tmp_path / "x"),
                 check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "--choose-on elsewhere: no such evaluation set" in r.stderr
    r = cli_here(capsys, "wise", str(runs["bi-seq_bn"]), "--start", str(runs["bi-ia3"]), "--out", str(tmp_path / "x"),
                 check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "different adapter" in r.stderr


def test_a_path_of_one_point_is_said(tmp_path, runs, small_stsb):
    """θ0 = θ1 (here: a run interpolated from itself; in practice a run whose best epoch is 0)."""
    said: list[str] = []
    wise(runs["bi-seq_bn"], tmp_path / "same", [EvalSet("dev", str(small_stsb["dev"]), "id")], SourceOptions(limit=16),
         WiseConfig(alphas=[0.0, 1.0], ensemble=False, progress=False), start_dir=runs["bi-seq_bn"], say=said.append)
    assert "every α gives the same model" in said[0]


def test_genre_shift_splits(tmp_path, stsb_dir):
    r = _cli("shift-splits", str(stsb_dir), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    genre = {"main-captions": "captions", "main-news": "news", "main-forum": "forum", "main-forums": "forum"}
    original = {}
    for split in ("train", "dev", "test"):
        with open(stsb_dir / f"sts-{split}.csv", "rb") as f:
            original[split] = [line for line in f if line.strip()]
    for held in ("captions", "news", "forum"):
        folder = tmp_path / f"heldout-{held}"
        for split in ("train", "dev", "test"):
            got = (folder / f"sts-{split}.csv").read_bytes().splitlines(keepends=True)
            want = [line for line in original[split] if genre[line.split(b"\t")[0].decode()] != held]
            assert got == want
        ood = (folder / "sts-ood.csv").read_bytes().splitlines(keepends=True)
        assert ood == [line for s in ("dev", "test") for line in original[s]
                       if genre[line.split(b"\t")[0].decode()] == held]
        for split in ("dev", "test"):  # the same rows by split, for choosing α on the shift
            got = (folder / f"sts-ood-{split}.csv").read_bytes().splitlines(keepends=True)
            assert got == [line for line in original[split] if genre[line.split(b"\t")[0].decode()] == held]
        pairs, _ = read_pairs(folder / "sts-ood.csv")
        assert len(pairs) == len(ood) and len(set(map(genre.get, pairs.groups))) == 1
    counts = collections.Counter(genre[line.split(b"\t")[0].decode()] for line in original["train"])
    assert sum(counts.values()) == 5749


def _one_se_reference(x, y, x_dev, y_dev, grid):
    """Each penalty solved with numpy, then glmnet's one-standard-error rule: (the chosen penalty, its
    weights, the penalty with the lowest dev MSE)."""
    xc, rows = x - x.mean(0), []
    for p in grid:
        w = np.linalg.solve(xc.T @ xc + p * np.eye(x.shape[1]), xc.T @ (y - y.mean()))
        err = (x_dev @ w + y.mean() - x.mean(0) @ w - y_dev) ** 2
        rows.append((p, err.mean(), err.std(ddof=1) / np.sqrt(len(err)), w))
    lowest = min(rows, key=lambda r: r[1])
    chosen = max((r for r in rows if r[1] <= lowest[1] + lowest[2]), key=lambda r: r[0])
    return chosen[0], chosen[3], lowest[0]


def test_ridge_takes_the_largest_penalty_within_one_se_and_extends_past_its_edge():
    """The penalty is the largest within one standard error of the best dev MSE (against numpy's solve
    per penalty), larger than the best's; a choice at the end of the grid is not trusted: the grid
    grows by decades; a target the features cannot explain stays at the edge, flagged."""
    from toolkit.training.linear_probe import EXTEND_DECADES, RIDGE_PENALTIES, fit_ridge

    rng = np.random.default_rng(0)
    x, x_dev = rng.normal(size=(400, 40)), rng.normal(size=(400, 40))
    w_true = rng.normal(size=40) * 0.1  # a weak signal under noise: the best penalty is inside the grid
    y, y_dev = x @ w_true + rng.normal(size=400), x_dev @ w_true + rng.normal(size=400)
    w, b, result = fit_ridge(x, y, x_dev, y_dev)
    penalty, want, lowest = _one_se_reference(x, y, x_dev, y_dev, RIDGE_PENALTIES)
    assert min(RIDGE_PENALTIES) < lowest < penalty == result.penalty < max(RIDGE_PENALTIES) and not result.at_edge
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-9)
    x, x_dev = 100 * x, 100 * x_dev  # ... and 1e4 times that on features 100 times larger: beyond the grid
    w, b, result = fit_ridge(x, y, x_dev, y_dev)
    grown = [*RIDGE_PENALTIES, *(max(RIDGE_PENALTIES) * 10 ** k for k in range(1, EXTEND_DECADES + 1))]
    penalty, want, _ = _one_se_reference(x, y, x_dev, y_dev, grown)
    assert result.penalty == penalty > max(RIDGE_PENALTIES) and not result.at_edge
    np.testing.assert_allclose(w, want, rtol=1e-6, atol=1e-9)
    x, x_dev = x[:60] / 100, x_dev[:60] / 100
    noise = rng.normal(size=60)  # nothing to explain: the largest penalty always wins
    _, _, flat = fit_ridge(x, noise, x_dev, rng.normal(size=60), extend=2)
    assert flat.at_edge and flat.penalty == max(RIDGE_PENALTIES) * 100
    assert "edge of the searched range" in flat.describe()
    _, _, inner = fit_ridge(x, x @ rng.normal(size=40) + 0.01 * rng.normal(size=60), x_dev,
                            x_dev @ np.zeros(40), extend=0)
    assert inner.at_edge == (inner.penalty in (min(RIDGE_PENALTIES), max(RIDGE_PENALTIES)))


def test_output_ensemble_mixes_the_two_endpoints_scores(tmp_path, runs, small_stsb):
    """The output-space baseline against an independent reference: plain transformers' zero-shot scores
    and a fresh load of the run, mixed by hand, scored by scipy; on a grid without 0 and 1 (the
    endpoints are then predicted on their own), with α chosen on a named set."""
    from scipy.stats import spearmanr

    from toolkit.robustness.wise import EvalSet, WiseConfig, wise

    pairs, _ = read_pairs(small_stsb["dev"], SourceOptions(), gold=True)
    run = load_run(runs["bi-seq_bn"], fused_kernel="off")
    start = run.labels.denormalize(_zero_shot(pairs.s1, pairs.s2))
    end = run.predictor().predict(pairs.s1, pairs.s2)
    sets = [EvalSet("dev", str(small_stsb["dev"]), "id"), EvalSet("shift", str(small_stsb["test"]), "ood")]
    result = wise(runs["bi-seq_bn"], tmp_path / "w", sets, SourceOptions(),
                  WiseConfig(alphas=[0.25, 0.6], progress=False, choose_on="shift"), choose=True, say=lambda s: None)
    mixed = {r["alpha"]: r for r in result.records if r["mode"] == "outputs" and r["set"] == "dev"}
    assert sorted(mixed) == [0.25, 0.6] and len(result.records) == 8
    for alpha, record in mixed.items():
        want = spearmanr((1 - alpha) * start + alpha * end, pairs.scores).statistic
        assert record["spearman"] == pytest.approx(want, abs=2e-6)
    info = json.loads((tmp_path / "w" / "config.json").read_text())["wise"]
    assert info["chosen_on_set"] == "shift" and info["chosen_on_role"] == "ood"
    shift = {r["alpha"]: r["spearman"] for r in result.records if r["mode"] == "weights" and r["set"] == "shift"}
    assert info["alpha"] == choose_alpha(result.records, on="shift") == max(shift, key=shift.get)
    assert info["ensemble_alpha"] == choose_alpha(result.records, on="shift", mode="outputs")

