"""``toolkit distill``: silver pairs drawn as promised (distinct, never a gold pair or a dev sentence,
neighbours that are neighbours), scored as the teacher scores them, the student trained on gold +
silver and chosen on gold dev; a rerun reads the labels back and finds the student finished; other
settings are refused. References: the teacher's own pair-by-pair predictions, numpy's full sort for
the neighbours, scipy for the metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import cli_here, stsb_rows
from scipy.stats import spearmanr

from toolkit.artifacts.open_model import load_model
from toolkit.training.run_dir import load_run


def _pairs(rows: list[list[str]]) -> set[frozenset]:
    return {frozenset((r[5], r[6])) for r in rows}


def _silver(folder: Path) -> dict:
    (path,) = folder.glob("silver-*.parquet")
    return pq.read_table(path).to_pydict()


def _top_k(embeddings: np.ndarray, k: int) -> list[set[int]]:
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in sims]


def test_bi_teacher_silver_student_rerun_and_refusal(tmp_path, small_stsb, small_models, capsys):
    out = tmp_path / "d"
    args = ["distill", "--train", small_stsb["train"], "--dev", small_stsb["dev"], "--limit", "60",
            "--teacher", small_models["run"], "--silver-pairs", "120", "--neighbours", "2", "--out", out,
            "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--quiet"]
    done = cli_here(capsys, *args)
    gold_rows, dev_rows = stsb_rows("train", 60), stsb_rows("dev", 60)
    silver = _silver(out)
    s1, s2, origin = silver["sentence1"], silver["sentence2"], silver["origin"]
    pairs = [frozenset(p) for p in zip(s1, s2)]
    sentences = list(dict.fromkeys([s for r in gold_rows for s in (r[5], r[6])]))
    assert len(pairs) == len(set(pairs)) == 120 and all(len(p) == 2 for p in pairs)  # distinct, no self pairs
    assert not set(pairs) & _pairs(gold_rows)  # never a gold pair
    assert set(s1) | set(s2) <= set(sentences)  # training sentences only (not dev's)
    assert (origin.count("neighbour"), origin.count("random")) == (60, 60)

    teacher = load_model(small_models["run"]).predictor()
    want = np.clip(teacher.predict(s1, s2, dedupe=False), 0, 5)  # pair by pair, as any caller scores them
    np.testing.assert_allclose(silver["score"], want, atol=1e-5)
    top = _top_k(teacher.embed(sentences), 2)
    where = {s: i for i, s in enumerate(sentences)}
    for a, b, o in zip(s1, s2, origin):
        if o == "neighbour":
            assert where[b] in top[where[a]] or where[a] in top[where[b]], (a, b)

    summary = json.loads((out / "distill.json").read_text())
    fifths = summary["silver"].pop("share_per_fifth_of_range")
    assert summary["silver"] | {"key": None} == {"key": None, "pairs": 120, "used": 120, "neighbour": 60,
                                                 "random": 60, "score_mean": pytest.approx(np.mean(want)),
                                                 "score_std": pytest.approx(np.std(want))}
    assert fifths["silver"] == pytest.approx(np.histogram(want, np.linspace(0, 5, 6))[0] / 120, abs=1e-4)
    assert fifths["gold"] == pytest.approx(np.histogram([float(r[4]) for r in gold_rows], np.linspace(0, 5, 6))[0]
                                           / 60, abs=1e-4)
    student = out / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["resolved"]["train_rows"] == 60 + 120 and config["resolved"]["dev_rows"] == 60
    dev = pq.read_table(config["data"]["dev"]).to_pydict()
    assert list(zip(dev["sentence1"], dev["sentence2"])) == [(r[5], r[6]) for r in dev_rows]
    pred = load_run(student).predictor().predict(dev["sentence1"], dev["sentence2"])
    assert summary["student"]["dev"]["spearman"] == pytest.approx(spearmanr(pred, dev["score"])[0], abs=1e-9)
    assert "student written to" in done.stdout and (out / "distill.png").stat().st_size > 10_000

    stamp = next(out.glob("silver-*.parquet")).stat().st_mtime_ns
    again = cli_here(capsys, *args)  # the same command: labels read back, the student already finished
    assert "pairs read back from" in again.stderr and "this run already finished" in again.stdout + again.stderr
    assert next(out.glob("silver-*.parquet")).stat().st_mtime_ns == stamp
    other = cli_here(capsys, *[("100" if a == "120" else a) for a in args], check=False)  # other silver
    assert other.returncode == 2 and "this run was started with other settings" in other.stderr.strip().splitlines()[-1]
    assert json.loads((student / "config.json").read_text()) == config  # untouched


def test_cross_teacher_held_out_dev_share_and_test(tmp_path, small_stsb, capsys):
    """A cross-encoder teacher: neighbours from the student's starting model, each silver pair scored by
    the teacher; dev held out of the one file, its pairs never sampled; student and teacher tested."""
    cli_here(capsys, "train", "--train", small_stsb["train"], "--dev", small_stsb["dev"], "--limit", "48",
             "--arch", "cross", "--adapter", "lora", "--epochs", "1", "--max-length", "32", "--lr", "5e-3",
             "--out", tmp_path / "cross", "--quiet")
    out = tmp_path / "d"
    done = cli_here(capsys, "distill", "--data", small_stsb["train"], "--limit", "80", "--dev-fraction", "0.25",
                    "--teacher", tmp_path / "cross", "--silver-pairs", "90", "--neighbour-share", "0.4",
                    "--silver-share", "0.4", "--test", small_stsb["test"], "--out", out, "--epochs", "1",
                    "--max-length", "32", "--quiet")
    silver = _silver(out)
    assert silver["origin"].count("neighbour") == 36
    teacher = load_model(tmp_path / "cross").predictor()
    np.testing.assert_allclose(silver["score"], np.clip(teacher.predict(silver["sentence1"], silver["sentence2"]),
                                                        0, 5), atol=1e-5)
    config = json.loads((out / "student" / "config.json").read_text())
    train = pq.read_table(config["data"]["train"]).to_pydict()
    dev = pq.read_table(config["data"]["dev"]).to_pydict()
    gold = [(a, b) for a, b, o in zip(train["sentence1"], train["sentence2"], train["origin"]) if o == "gold"]
    assert len(gold) + len(dev["score"]) == 80 and not {frozenset(p) for p in gold} & \
        {frozenset(p) for p in zip(dev["sentence1"], dev["sentence2"])}
    used = len(train["score"]) - len(gold)
    assert used == round(0.4 / 0.6 * len(gold)) and train["origin"][len(gold):] == silver["origin"][:used]
    assert set(silver["sentence1"]) | set(silver["sentence2"]) <= {s for p in gold for s in p}

    summary = json.loads((out / "distill.json").read_text())
    test = stsb_rows("test", 80)
    gold_test = [float(r[4]) for r in test]
    for name, model in (("student", load_run(out / "student").predictor()), ("teacher", teacher)):
        pred = model.predict([r[5] for r in test], [r[6] for r in test])
        assert summary[name]["test"]["spearman"] == pytest.approx(spearmanr(pred, gold_test)[0], abs=1e-9)
    assert "test Spearman" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--teacher", "no-such-teacher"], "no-such-teacher"),
    ([], "name the teacher: --teacher RUN"),
    (["--teacher", "TEACHER", "--silver-share", "1"], "--silver-share"),
])
def test_bad_distill_options_fail_in_one_line(tmp_path, small_stsb, small_models, capsys, args, message):
    args = [str(small_models["run"]) if a == "TEACHER" else a for a in args]
    done = cli_here(capsys, "distill", "--train", small_stsb["train"], "--dev", small_stsb["dev"], *args,
                    "--out", tmp_path / "d", check=False)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "d").exists()


def test_a_folder_that_holds_something_else_is_not_written_into(tmp_path, small_stsb, small_models, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    done = cli_here(capsys, "distill", "--train", small_stsb["train"], "--dev", small_stsb["dev"], "--teacher",
                    small_models["run"], "--out", tmp_path / "d", check=False)
    assert done.returncode == 2 and done.stderr.strip() == (f"{tmp_path / 'd'}: already exists and holds no "
                                                            "distillation; choose another --out or pass --overwrite")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]
