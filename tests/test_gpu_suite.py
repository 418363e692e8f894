"""benchmarks/gpu_suite.py cannot rot between GPU loans: its smoke run (every part, tiny sizes, the
kernel in Triton's interpreter) passes on every CI, and a part that fails is reported while the
next one still runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def _suite(out: Path, *args: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SUITE), "--smoke", "--out", str(out), *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO)
    results = json.loads((out / "results.json").read_text())
    return proc, results


def test_smoke_run_passes_every_part(tmp_path):
    proc, results = _suite(tmp_path / "out", "--work", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = results["parts"]
    assert list(parts) == ["env", "kernel", "train", "score", "tune"]
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part["error"])
        assert part["decisions"], f"{name}: no decision line"
    decided = {d["target"]: d for p in parts.values() for d in p["decisions"]}
    assert decided["correctness vs float64 reference (fwd+bwd, every dtype and shape)"]["met"] is True
    losses = [d for t, d in decided.items() if "final loss equal" in t]
    assert losses and all(d["met"] for d in losses)  # the fused and the library's training agree
    assert decided["Spearman loss ≤ 0.3"]["met"] is True
    train = parts["train"]["rows"]
    assert [r["kernel"] for r in train] == ["off", "on"] and train[0]["fused layers"] == 0
    assert train[1]["fused layers"] == 6  # one per layer of MiniLM-L6: the kernel really ran
    scorers = {r["scorer"] for r in parts["score"]["rows"]}
    assert any(s.startswith("CrossEncoder") for s in scorers) and any(s.startswith("toolkit") for s in scorers)
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| part | status | seconds | decision |" in table and "| kernel | ok |" in table


def test_a_failing_part_is_reported_and_the_next_still_runs(tmp_path):
    proc, results = _suite(tmp_path / "out", "--parts", "score,tune", "--stsb", str(tmp_path / "no-such-stsb"))
    assert proc.returncode == 1
    score, tune = results["parts"]["score"], results["parts"]["tune"]
    assert score["status"] == "failed" and "no-such-stsb" in score["error"] and "\n" not in score["error"]
    assert tune["status"] == "ok" and tune["rows"]
    assert "Traceback" in (tmp_path / "out" / "suite.log").read_text()
