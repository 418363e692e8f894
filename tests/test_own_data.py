"""A user's own file, end to end: columns that are not the defaults, named once (at check and train),
then every later command from another folder with no column flag; outputs checked against an
independent reading of the files (csv, json, pyarrow) and against the Python API's predictions."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_here, stsb_rows, write_pairs
from scipy.stats import spearmanr

from toolkit.cli import main
from toolkit.sources import PairChunk
from toolkit.training.run_data import DataConfig, held_out_split

COLUMNS = ["--s1-col", "question_a", "--s2-col", "question_b", "--score-col", "similarity", "--score-range", "0:1"]


def own_rows(split: str, n: int) -> list[dict]:
    """STS-B pairs under a user's column names, scores on 0..1."""
    return [{"question_a": r[5], "question_b": r[6], "similarity": float(r[4]) / 5} for r in stsb_rows(split, n)]


def read_back(path: Path) -> list[dict]:
    """The file as the user wrote it, read without the toolkit."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            return [{**r, "similarity": float(r["similarity"])} for r in csv.DictReader(f)]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def run_cli(capsys, *args) -> tuple[str, str]:
    """``toolkit ARGS`` in this process; it must exit 0."""
    done = cli_here(capsys, *args)
    return done.stdout, done.stderr


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_own_file_end_to_end(tmp_path, capsys, monkeypatch, suffix):
    """CSV goes through every command; JSONL and Parquet through each command that reads a file (the
    others, predict, merge and the sentence-transformers export, read no pair file)."""
    full = suffix == ".csv"
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    write_pairs(home / f"pairs{suffix}", own_rows("train", 160))
    new = write_pairs(home / f"new{suffix}", own_rows("dev", 40))
    given, fresh = read_back(home / f"pairs{suffix}"), read_back(new)

    monkeypatch.chdir(home)  # the user's folder: paths as they typed them, relative
    out, _ = run_cli(capsys, "check", f"pairs{suffix}", *COLUMNS)
    assert f"{len(given)} rows, {len(given)} good, 0 with problems" in out
    run_cli(capsys, "train", "--data", f"pairs{suffix}", *COLUMNS, "--out", "run", "--epochs", "1",
                     "--adapter", "lora", "--max-length", "48", "--dev-fraction", "0.25", "--lr", "5e-3")
    run = home / "run"
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    n_dev = resolved["dev_rows"]
    assert resolved["train_rows"] + n_dev == len(given) and abs(n_dev - 0.25 * len(given)) <= 2
    said = (run / "train.log").read_text(encoding="utf-8")
    assert f"data {len(given) - n_dev} train / {n_dev} dev pairs, held out from pairs{suffix}, seed 42;" in said

    monkeypatch.chdir(elsewhere)  # every later command from another folder, with no column flag
    if full:  # the same command rerun from elsewhere (a requeued job): the same run, already finished
        out, err = run_cli(capsys, "train", "--data", f"../home/pairs{suffix}", *COLUMNS, "--out", "../home/run",
                         "--epochs", "1", "--adapter", "lora", "--max-length", "48", "--dev-fraction", "0.25",
                         "--lr", "5e-3", "--resume-if-exists")
        assert "this run already finished" in out + err
    metrics, err = run_cli(capsys, "eval", run, "--data", new)
    assert "reading s1=question_a, s2=question_b, score=similarity, score range 0:1 as the model was trained" in err
    run_cli(capsys, "export", run, "--onnx", "--out", "fp32")
    gate = json.loads((elsewhere / "fp32" / "metadata.json").read_text())
    assert gate["verification"]["pairs"] == min(n_dev, 256) and gate["verification"]["data"] == f"pairs{suffix}"
    assert gate["columns"] == {"s1_col": "question_a", "s2_col": "question_b", "score_col": "similarity"}

    import toolkit

    bundle = toolkit.load(elsewhere / "fp32")
    expected = bundle.predict([r["question_a"] for r in fresh], [r["question_b"] for r in fresh])
    gold = [r["similarity"] for r in fresh]
    assert f"n={len(fresh)} spearman={100 * spearmanr(expected, gold).statistic:.2f}" in metrics

    _, err = run_cli(capsys, "score", "fp32", new, "--out", "scores.jsonl")
    assert "reading s1=question_a, s2=question_b as the model was trained" in err
    scored = [json.loads(line) for line in (elsewhere / "scores.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [str(i) for i in range(1, len(fresh) + 1)]  # every row once, in order
    np.testing.assert_allclose([r["score"] for r in scored], expected, atol=1e-5)

    run_cli(capsys, "wise", run, "--out", "wise", "--alphas", "0,0.5,1", "--ood", new, "--choose")
    records = [json.loads(line) for line in (elsewhere / "wise" / "results.jsonl").read_text().splitlines()]
    by_set = {r["set"]: r["n"] for r in records if r["alpha"] == 1.0 and r["mode"] == "weights"}
    assert by_set == {"pairs-dev": n_dev, "new": len(fresh)}
    assert all(r["data"] == str(home / f"pairs{suffix}") for r in records if r["set"] == "pairs-dev")
    if not full:
        return

    run_cli(capsys, "export", run, "--onnx", "--quantize", "int8", "--out", "int8",
            "--max-spearman-drop", "5")  # the gate runs on the run's dev pairs; a few dozen pairs are noisy
    assert json.loads((elsewhere / "int8" / "metadata.json").read_text())["verification"]["pairs"] == n_dev
    pair = (fresh[0]["question_a"], fresh[0]["question_b"])
    out, _ = run_cli(capsys, "predict", run, *pair)
    assert float(out) == pytest.approx(float(expected[0]), abs=1e-4)
    run_cli(capsys, "merge", run, "--out", "merged")
    merged = toolkit.load(elsewhere / "merged").predict([pair[0]], [pair[1]])
    assert float(merged[0]) == pytest.approx(float(expected[0]), abs=1e-4)
    run_cli(capsys, "export", run, "--sentence-transformers", "--out", "st")
    from sentence_transformers import SentenceTransformer

    a, b = SentenceTransformer(str(elsewhere / "st"), device="cpu").encode(list(pair), normalize_embeddings=True)
    labels = json.loads((run / "config.json").read_text())["labels"]
    assert labels["offset"] + labels["scale"] * float(a @ b) == pytest.approx(float(expected[0]), abs=1e-4)


def _chunk(texts: list[tuple[str, str]]) -> PairChunk:
    n = len(texts)
    return PairChunk(ids=[str(i) for i in range(n)], s1=[a for a, _ in texts], s2=[b for _, b in texts],
                     scores=np.zeros(n), groups=None, locs=list(range(n)))


def test_held_out_split_keeps_identical_pairs_together():
    """Checked by set arithmetic, not by the split's own code: both sides partition the rows, in file
    order; a pair repeated (either order) lies on one side; the share is the asked one to within the
    largest group; the seed decides it."""
    rng = np.random.default_rng(0)
    texts = [(f"a{i}", f"b{i}") for i in range(200)]
    texts += [texts[i] for i in rng.integers(0, 200, 40)] + [texts[i][::-1] for i in rng.integers(0, 200, 20)]
    pairs = _chunk(texts)
    train, dev = held_out_split(pairs, 0.1, 42, "pairs.csv")
    assert sorted([*train, *dev]) == list(range(len(texts))) and list(train) == sorted(train)
    assert list(dev) == sorted(dev)
    side = {}
    for rows, name in ((train, "train"), (dev, "dev")):
        for r in rows:
            assert side.setdefault(frozenset(texts[r]), name) == name, texts[r]
    largest = max(sum(frozenset(t) == frozenset(u) for u in texts) for t in texts)
    assert abs(len(dev) - 0.1 * len(texts)) <= largest
    again, other = held_out_split(pairs, 0.1, 42, "x")[1], held_out_split(pairs, 0.1, 7, "x")[1]
    assert list(again) == list(dev) and list(other) != list(dev)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_held_out_split_of_tiny_files(n):
    texts = [(f"a{i}", f"b{i}") for i in range(n)]
    if n == 1:
        with pytest.raises(Exception, match=r"1 pairs \(1 distinct\): too few to hold out a dev share"):
            held_out_split(_chunk(texts), 0.1, 42, "tiny.csv")
        return
    train, dev = held_out_split(_chunk(texts), 0.1, 42, "tiny.csv")
    assert len(train) >= 1 and len(dev) >= 1 and len(train) + len(dev) == n


def test_same_file_for_train_and_dev_is_refused(tmp_path, capsys, monkeypatch):
    write_pairs(tmp_path / "pairs.csv", own_rows("train", 20))
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path / "pairs.csv", tmp_path / "alias.csv")
    for dev in ("pairs.csv", str(tmp_path / "pairs.csv"), "alias.csv"):
        code = main(["train", "--train", "pairs.csv", "--dev", dev, "--out", "run", *COLUMNS])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "--train and --dev name the same pairs" in err and "drop --dev to hold out a share" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(Exception, match=r"--dev-fraction must be in \(0, 1\), not 1.0"):
        DataConfig(train="pairs.csv", dev_fraction=1.0).validate()


def test_recorded_data_missing_or_changed_is_named(tmp_path, capsys, small_models, small_stsb):
    """A run whose dev file is gone, or whose held-out file changed, names the file and the flag to
    pass, in one line."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(small_models["run"], run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["dev"] = str(tmp_path / "gone.csv")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["export", str(run), "--onnx", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"{run}/config.json: the run's dev file {tmp_path}/gone.csv is not there: pass "
                   "--verify-data FILE")
    changed = tmp_path / "dev.csv"
    lines = Path(small_stsb["dev"]).read_text(encoding="utf-8").splitlines()
    fields = lines[0].split("\t")
    fields[4] = f"{(float(fields[4]) + 1) % 5:.3f}"  # one gold score edited: what training read differs
    changed.write_text("\n".join(["\t".join(fields), *lines[1:]]) + "\n", encoding="utf-8")
    config["data"]["dev"] = str(changed)
    (run / "config.json").write_text(json.dumps(config))
    assert main(["wise", str(run), "--out", str(tmp_path / "w"), "--alphas", "0,1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"{run}/config.json: the run's dev file {changed} has changed since training (its dev pairs "
                   "are not the ones the run was selected on): pass --id FILE")
