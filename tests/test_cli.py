"""Every command end to end through the real console script, and clean one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TOOLKIT = [sys.executable, "-m", "toolkit.cli"]


def toolkit(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*TOOLKIT, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"toolkit {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_check_stsb_release(stsb_dir):
    out = toolkit("check", stsb_dir / "sts-train.csv").stdout
    assert "STS-B release layout" in out and "5749 rows, 5749 good, 0 with problems" in out
    assert "main-captions 2000, main-forum 450, main-news 3299" in out


def test_check_lists_every_problem(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("sentence1,sentence2,score\na,b,1\n,b,2\na,b,x\na,b,9\n")
    proc = toolkit("check", path, "--score-range", "0:5", check=False)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[:3] == [f"{path}:3: empty sentence1", f"{path}:4: score 'x' is not a number",
                                            f"{path}:5: score 9 outside the declared range 0..5"]
    assert "4 rows, 1 good, 3 with problems" in proc.stdout


TRAIN_BAD = ["train", "--train", "{tmp}/bad.csv", "--dev", "{tmp}/bad.csv", "--out", "{tmp}/run"]


@pytest.mark.parametrize("args,expected", [
    (["check", "{tmp}/missing.csv"], "{tmp}/missing.csv: no such file"),
    (TRAIN_BAD, "{tmp}/bad.csv:3: empty sentence2"),
    (["eval", "{tmp}/norun", "--data", "{tmp}/bad.csv"],
     "{tmp}/norun: not a run directory, merged folder or ONNX bundle (no such folder); train one with "
     "`toolkit train`"),
    (["train", "--data", "stsb:{tmp}/nowhere", "--out", "{tmp}/run"],
     "{tmp}/nowhere: no such folder (--data stsb:{tmp}/nowhere)"),
    (TRAIN_BAD + ["--model", "org/model"], "model 'org/model' is neither a known short name (all-minilm-l6-v2, "
     "minilm-l6) nor a local folder; toolkit loads models offline only"),
])
def test_errors_are_one_line_without_traceback(tmp_path, args, expected):
    (tmp_path / "bad.csv").write_text("sentence1,sentence2,score\na,b,1\nc,,2\n")
    proc = toolkit(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == expected.format(tmp=tmp_path)
    assert "Traceback" not in proc.stderr


def test_train_eval_predict_end_to_end(tmp_path, stsb_dir, small_stsb):
    run = tmp_path / "run"
    proc = toolkit("train", "--data", f"stsb:{stsb_dir}", "--limit", "120", "--epochs", "1", "--max-length", "64",
                   "--out", run)
    assert "parameters trainable" in proc.stderr + proc.stdout
    for name in ("config.json", "metrics.json", "train.log", "train_log.jsonl", "adapter/adapter.safetensors"):
        assert (run / name).is_file(), name
    proc = toolkit("eval", run, "--data", small_stsb["test"], "--json", tmp_path / "m.json",
                   "--plot", tmp_path / "m.png")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"n", "mse", "rmse", "mae", "pearson", "spearman"} <= set(metrics)
    assert metrics["n"] == 80 and 0 < metrics["spearman"] <= 1 and set(metrics["groups"]) == {"main-captions"}
    assert f"spearman={100 * metrics['spearman']:.2f}" in proc.stdout
    assert Path(tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "with_bad_rows.tsv"
    lines = small_stsb["test"].read_text().splitlines()[:30]
    broken = ["main-news\tf\t2012\t1\t2.0\t\tempty first", "only\ttwo"]
    bad.write_text("\n".join(lines[:10] + broken + lines[10:]) + "\n")
    proc = toolkit("eval", run, "--data", bad, "--skip-bad-rows", "--json", tmp_path / "skip.json")
    assert f"{bad}: skipped 2 bad rows of 32, kept 30; first: {bad}:11: empty sentence1" in proc.stderr
    assert json.loads((tmp_path / "skip.json").read_text())["n"] == 30
    score = float(toolkit("predict", run, "A plane is taking off.", "An air plane is taking off.").stdout)
    low = float(toolkit("predict", run, "A plane is taking off.", "A woman is slicing an onion.").stdout)
    assert 3.5 < score <= 5.5 and low < score


def test_train_with_files_and_other_formats(tmp_path):
    from conftest import dict_rows, write_pairs

    from toolkit.loading import resolve_model

    train = write_pairs(tmp_path / "train.parquet",
                        [{**r, "pid": f"t{i}"} for i, r in enumerate(dict_rows("train", 64))])
    dev = write_pairs(tmp_path / "dev.jsonl", [{**r, "pid": f"d{i}"} for i, r in enumerate(dict_rows("dev", 32))])
    run = tmp_path / "lora"
    toolkit("train", "--train", train, "--dev", dev, "--adapter", "lora", "--arch", "cross", "--epochs", "1",
            "--id-col", "pid", "--group-col", "genre", "--max-length", "64", "--out", run,
            "--model", resolve_model("minilm-l6")[1])  # a model given as a local folder
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["adapter"] == "lora" and config["labels"]["kind"] == "zscore"
    assert config["base_model"]["name"] == str(resolve_model("minilm-l6")[1])
    proc = toolkit("eval", run, "--data", dev, "--group-col", "genre")
    assert "main-captions" in proc.stdout
