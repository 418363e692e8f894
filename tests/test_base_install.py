"""The README's main job, every stage, in an environment with only the base install: no DeepSpeed,
Ray, Triton, optimum or test tools. A core path that imports an optional extra fails here.

The environment is a real one: ``.venv-base`` beside ``.venv``, made by ``.ci/setup`` with BASE=1
(minutes the first time, kept between runs); the job is ``launch/stsb.sh`` with SMOKE=1."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
from conftest import assert_recorded_choices

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-base"
OPTIONAL = ("deepspeed", "ray", "triton", "optimum", "hypothesis", "pytest")


def test_main_job_runs_with_the_base_install_alone(tmp_path):
    env = {**os.environ, "VENV": str(VENV), "BASE": "1", "SMOKE": "1", "HF_HUB_OFFLINE": "1",
           "TOOLKIT_CACHE_DIR": str(tmp_path / "cache"),
           "COMPILE": "0"}  # not all of torch byte-compiled: the job's processes compile what they import, once
    for name in ("TRITON_INTERPRET", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    run = tmp_path / "run"
    proc = subprocess.run(["bash", "launch/stsb.sh", str(run)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # the int8 export (a process of its own) reuses torch's export of the fp32 one, of the same run
    assert (proc.stdout + proc.stderr).count("torch's export of this model reused from") == 1
    found = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.util as u, json; print(json.dumps("
                            f"[m for m in {OPTIONAL!r} if u.find_spec(m)]))"], capture_output=True, text=True)
    assert json.loads(found.stdout) == [], "the base environment holds an optional extra"
    # the kernels folder installs inside the package: a top-level `kernels` is left to other projects
    where = subprocess.run([str(VENV / "bin" / "python"), "-c", "import importlib.util as u; "
                            "print(u.find_spec('kernels'), u.find_spec('toolkit.kernels').origin)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert where.stdout.split() == ["None", str(REPO / "kernels" / "__init__.py")], where.stderr
    assert_recorded_choices(run, Path(f"{run}-wise"))
    assert json.loads((run / "test_metrics.json").read_text())["n"] == 200  # SMOKE: the first 200 test pairs
    assert json.loads((Path(f"{run}-onnx-int8") / "test_metrics.json").read_text())["n"] == 200
    assert pq.read_metadata(f"{run}-test-scores.parquet").num_rows == 200
