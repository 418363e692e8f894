"""``toolkit search`` on a small slice of one file (its dev share held out): trials on dev only, the
best re-run per seed and scored on test; a search killed between a trial's training and its record
resumes to the trials and results of an uninterrupted search (no trial lost or counted twice); a
finished search rerun does nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_here

pytest.importorskip("optuna")


def _search(out, small_stsb, capsys=None, crash: str = "") -> subprocess.CompletedProcess:
    """``toolkit search`` with a small plan: in this process (``capsys`` given), or in a process of its
    own, which a crash point can kill."""
    args = ["search", "--data", str(small_stsb["train"]), "--dev-fraction", "0.25", "--test", str(small_stsb["test"]),
            "--limit", "32", "--max-length", "40", "--batch-size", "8", "--epochs", "1", "--patience", "0",
            "--trials", "3", "--epoch-choices", "1", "--lr-min", "1e-4", "--lr-max", "1e-2", "--seeds", "1", "2",
            "--out", str(out)]
    if capsys is not None:
        return cli_here(capsys, *args, check=False)
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TOOLKIT_CRASH_AT": crash}, timeout=900)


def _done(result: dict) -> list[tuple]:
    return [(json.dumps(t["setting"], sort_keys=True), t["value"]) for t in result["trials"]
            if t["state"] == "COMPLETE"]


def test_search_resumes_after_a_kill_to_the_uninterrupted_result(tmp_path, small_stsb, capsys):
    whole = _search(tmp_path / "whole", small_stsb, capsys)
    assert whole.returncode == 0, whole.stderr[-2000:]
    want = json.loads((tmp_path / "whole" / "search.json").read_text())
    assert len(_done(want)) == 3 and len({s for s, _ in _done(want)}) == 3  # three distinct settings
    assert {s["loss"] for s, _ in [(json.loads(s), v) for s, v in _done(want)]} <= {"mse", "cosent", "angle"}
    assert want["trials"][0]["setting"] == {"lr": 1e-3, "epochs": 1, "reduction_factor": 16.0, "loss": "mse"}
    values = [v for _, v in _done(want)]
    chosen = want["chosen"]
    assert chosen["dev"] == max(values)  # the best by dev, nothing else
    assert [r["seed"] for r in want["final"]] == [1, 2] and all("test" in r for r in want["final"])
    tests = [r["test"]["spearman"] for r in want["final"]]
    assert want["summary"]["test"][0] == pytest.approx(np.mean(tests), abs=1e-12)
    assert want["summary"]["test"][1] == pytest.approx(np.std(tests, ddof=1), abs=1e-12)
    assert (tmp_path / "whole" / "search.png").stat().st_size > 10_000
    assert "trial 3/3" in whole.stderr and "ETA" in whole.stderr
    runs = [json.loads(p.read_text()) for p in (tmp_path / "whole").rglob("config.json")]
    assert len(runs) == 5  # every trial and seed run selected on the 8 pairs held out of the one file
    assert all(r["data"]["dev"] is None and (r["resolved"]["train_rows"], r["resolved"]["dev_rows"]) == (24, 8)
               for r in runs), [r["resolved"] for r in runs]

    killed = _search(tmp_path / "killed", small_stsb, crash="search.trained:2")
    assert killed.returncode == -9
    again = _search(tmp_path / "killed", small_stsb, capsys)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "was interrupted: its setting is tried again" in again.stderr
    got = json.loads((tmp_path / "killed" / "search.json").read_text())
    assert _done(got) == _done(want)  # same settings asked, same values: exactly once each
    failed = [t for t in got["trials"] if t["state"] == "FAIL"]
    assert len(failed) == 1 and any(t["retry_of"] == failed[0]["number"] for t in got["trials"])
    assert [r["test"] for r in got["final"]] == [r["test"] for r in want["final"]]

    rerun = _search(tmp_path / "killed", small_stsb, capsys)  # finished: nothing is trained again
    assert rerun.returncode == 0 and "trial " not in rerun.stderr.replace("chosen on dev: trial", "")
    assert json.loads((tmp_path / "killed" / "search.json").read_text())["trials"] == got["trials"]
