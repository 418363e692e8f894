"""``toolkit score --engine ray`` on a real multi-node cluster: a head (0 CPUs) and two worker nodes of
1 CPU each, every node its own ``ray start`` process on loopback (benchmarks/ray_cluster.py), the job
submitted by a separate driver process (the CLI, ``--address``). Checked against the local engine's
output on the same file: every pair scored once with the same score, whatever was killed mid-job."""
from __future__ import annotations

import csv
import glob
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import stsb_rows

from toolkit.batch.config import ScoreConfig
from toolkit.batch.stream import score_file
from toolkit.sources import SourceOptions

pytest.importorskip("ray", reason="the ray extra is not installed")
psutil = pytest.importorskip("psutil")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ray_cluster import LocalCluster  # noqa: E402

# 20 parts of 30 pairs, 10 per actor: enough parts for a kill to land mid-job and for the spread to
# show, few enough pairs (the model scores ~90 pairs/s on one core here) for a 2-core CI machine
N, CHUNK = 600, 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("ray_logs")
    with LocalCluster(workers=2, log_dir=logs) as c:
        yield c
    assert not c.leftovers(), f"Ray processes left after tear-down: {c.leftovers()}"


@pytest.fixture(scope="module")
def bundles(small_models, small_stsb, tmp_path_factory) -> dict[str, Path]:
    from toolkit.artifacts.onnx_export import ExportConfig, export_onnx

    int8 = tmp_path_factory.mktemp("int8") / "bundle"
    # the gate is not under test here (the 48-pair model is barely trained); any int8 bundle will do
    export_onnx(small_models["run"], int8, ExportConfig(quantize="int8", verify_data=str(small_stsb["dev"]),
                                                        max_spearman_drop=100.0, threads=1), say=lambda line: None)
    return {"fp32": small_models["bundle"], "int8": int8}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """``N`` STS-B test pairs (cycled) as CSV: read tasks then start at byte offsets."""
    rows = stsb_rows("test")
    path = tmp_path_factory.mktemp("cluster_pairs") / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "genre"])
        for i in range(N):
            r = rows[i % len(rows)]
            w.writerow([r[5], r[6] if i % 3 else f"{r[6]} ({i})", r[0]])
    return path


@pytest.fixture(scope="module")
def local(bundles, pairs, tmp_path_factory) -> dict[str, dict[str, dict]]:
    """The local engine's rows by id for each bundle: the reference every Ray job is held to."""
    made = {}
    for precision, bundle in bundles.items():
        out = tmp_path_factory.mktemp(f"local_{precision}") / "scores.parquet"
        score_file(str(bundle), str(pairs), str(out), SourceOptions(),
                   ScoreConfig(chunk_size=CHUNK, threads=1, keep_cols=("genre",), progress=False,
                               runtime="onnxruntime"))  # the engine Ray's actors use under --runtime auto
        made[precision] = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    return made


def _driver(cluster: LocalCluster, bundle: Path, path: Path, out: Path, *extra: str,
            address: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "toolkit.cli", "score", str(bundle), str(path), "-o", str(out),
                             "--engine", "ray", "--address", address or cluster.address, "--chunk-size", str(CHUNK),
                             "--keep-cols", "genre", "--quiet", *extra],
                            env={**cluster.env, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(driver: subprocess.Popen, timeout: float = 600) -> tuple[str, str]:
    try:
        out, err = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        pytest.fail(f"the Ray job did not finish in {timeout:.0f}s: {err[-2000:]}")
    assert driver.returncode == 0, err[-3000:]
    return out, err


def _same_as_local(local: dict[str, dict], out: Path) -> None:
    """Every id once, with the local engine's score (bit for bit) and kept column."""
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert len(rows) == len({r["id"] for r in rows}) == len(local)
    for row in rows:
        assert row == local[row["id"]]


def _counts(stderr: str, kind: str) -> dict[str, int]:
    line = next(x for x in stderr.splitlines() if x.startswith(f"pairs per {kind}: "))
    return {k: int(v) for k, v in (item.split() for item in line.split(": ", 1)[1].split(", "))}


def _wait_for_first_part(out: Path, driver: subprocess.Popen) -> None:
    """Until the job has written its first scored part (so a kill lands mid-job)."""
    while not glob.glob(str(out.parent / f".{out.name}.*" / "*.parquet")):
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        time.sleep(0.05)


def test_work_spreads_over_worker_nodes(tmp_path, cluster, bundles, pairs, local):
    """Every row once with the local engine's score, and the work spread over both worker nodes."""
    _, err = _finish(_driver(cluster, bundles["int8"], pairs, tmp_path / "ray"))
    _same_as_local(local["int8"], tmp_path / "ray")
    nodes = _counts(err, "node")
    assert len(nodes) == 2 and sum(nodes.values()) == N, nodes  # the head has no CPUs: only workers score
    mean = N / 2
    assert all(mean / 2 <= n <= 2 * mean for n in nodes.values()), nodes
    assert "but the operator only received" not in err


def _kill_an_actor(cluster: LocalCluster) -> None:
    actors = [p for node in cluster.nodes for p in cluster.processes(node, "ScoreActor")]
    assert actors, "no scoring actor process found"
    actors[0].kill()


def test_an_actor_killed_mid_job_loses_and_duplicates_nothing(tmp_path, cluster, bundles, pairs, local):
    """The fp32 bundle here; the int8 one goes through the other jobs, a lost node's among them."""
    # --address auto: the cluster this node belongs to
    driver = _driver(cluster, bundles["fp32"], pairs, tmp_path / "ray", address="auto")
    _wait_for_first_part(tmp_path / "ray", driver)
    _kill_an_actor(cluster)
    _finish(driver)
    _same_as_local(local["fp32"], tmp_path / "ray")


def test_more_actors_than_the_cluster_holds_fail_in_one_line(tmp_path, cluster, bundles, pairs):
    driver = _driver(cluster, bundles["fp32"], pairs, tmp_path / "ray", "--actors", "3", "--wait-actors-s", "5")
    _, err = driver.communicate(timeout=300)
    assert driver.returncode != 0
    assert any(line.startswith("the cluster did not start 3 scoring actors in 5s (it has 2 CPUs")
               for line in err.splitlines()), err[-2000:]
    assert not (tmp_path / "ray").exists()


def test_a_worker_node_lost_mid_job_loses_and_duplicates_nothing(tmp_path, cluster, bundles, pairs, local):
    """The raylet of one worker is SIGKILLed (the machine is gone): its actor's parts are scored again
    on the other node; the output is the local engine's. int8: the README's Ray + int8 claim."""
    driver = _driver(cluster, bundles["int8"], pairs, tmp_path / "ray")
    _wait_for_first_part(tmp_path / "ray", driver)
    cluster.kill_node(cluster.nodes[1])
    _, err = _finish(driver)
    _same_as_local(local["int8"], tmp_path / "ray")
    assert sum(_counts(err, "node").values()) == N
