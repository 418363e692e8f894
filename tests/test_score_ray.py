"""``toolkit score --engine ray`` on a real multi-node cluster: a head (0 CPUs) and two worker nodes of
1 CPU each, every node its own ``ray start`` process on loopback (benchmarks/ray_cluster.py). Jobs come
from this process (joined to the cluster: one file in parts, a folder of files in two formats, bad rows
under both policies, refusals) and from separate driver processes (the CLI, ``--address``), checked
against the local engine's output on the same file: every pair scored once with the same score,
whatever was killed mid-job; and the one-line message without Ray. One cluster for the module: each
Ray instance costs its start and its first job's warm-up, seconds of a 2-core CI machine."""
from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from conftest import stsb_rows, write_pairs

from toolkit.batch.config import ScoreConfig
from toolkit.batch.stream import score_file
from toolkit.common.errors import ToolkitError
from toolkit.sources import Columns, SourceOptions

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
psutil = pytest.importorskip("psutil")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ray_cluster import LocalCluster  # noqa: E402

NO_RAY = Path(__file__).resolve().parent / "no_ray"

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


@pytest.fixture(scope="module")
def joined(cluster):
    """This process joined to the cluster as a driver (a job started here scores on the worker nodes)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env.items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="module")
def bundle(small_models) -> Path:
    return small_models["bundle"]


def _rows(n: int, offset: int = 0) -> list[dict]:
    return [{"sentence1": r[5], "sentence2": r[6], "genre": r[0]} for r in stsb_rows("test", offset + n)[offset:]]


def _local(bundle: Path, path: Path, out: Path, options: SourceOptions, cfg: ScoreConfig):
    summary = score_file(str(bundle), str(path), str(out), options, cfg)
    return pq.read_table(out).to_pylist(), summary


def _ray_out(folder: Path) -> list[dict]:
    return pads.dataset(str(folder), format="parquet").to_table().to_pylist()


def _same(local: list[dict], remote: list[dict]) -> None:
    got = {r["id"]: r for r in remote}
    assert len(got) == len(remote) == len(local)  # nothing duplicated, nothing lost
    for row in local:
        other = got[row["id"]]
        assert abs(other["score"] - row["score"]) <= 1e-6
        assert {k: v for k, v in other.items() if k not in ("id", "score")} == \
               {k: v for k, v in row.items() if k not in ("id", "score")}


def test_one_file_in_parts_equals_the_local_engine(tmp_path, joined, bundle):
    from toolkit.batch.ray_engine import RayConfig, score_ray

    src = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(450)), src, row_group_size=100)
    cfg = ScoreConfig(chunk_size=64, keep_cols=("genre",), progress=False, runtime="onnxruntime")  # = Ray's (auto)
    options = SourceOptions()
    local, _ = _local(bundle, src, tmp_path / "local.parquet", options, cfg)
    summary = score_ray(str(bundle), str(src), str(tmp_path / "ray"), options, cfg, RayConfig())
    assert summary.written == summary.rows == 450 and summary.bad == 0
    _same(local, _ray_out(tmp_path / "ray"))
    assert not list(tmp_path.glob(".ray.*"))  # the temporary folder was renamed into place


def test_folder_of_files_and_bad_rows(tmp_path, joined, bundle):
    """CSV + JSONL in one folder; skipped rows are counted and reported with file and line, as locally."""
    from toolkit.batch.ray_engine import RayConfig, score_ray

    folder = tmp_path / "in"
    folder.mkdir()
    csv_rows = _rows(120)
    csv_rows[7]["sentence2"] = ""  # bad: empty text
    import csv

    with open(folder / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
        w.writeheader()
        w.writerows(csv_rows)
    json_rows = _rows(90, offset=120)
    with open(folder / "b.jsonl", "w", encoding="utf-8") as f:
        for i, r in enumerate(json_rows):
            f.write("{not json\n" if i == 30 else json.dumps(r) + "\n")
    cfg = ScoreConfig(chunk_size=50, progress=False, runtime="onnxruntime")  # the engine Ray's actors use
    options = SourceOptions(policy="skip")
    summary = score_ray(str(bundle), str(folder), str(tmp_path / "ray"), options, cfg, RayConfig())
    assert (summary.rows, summary.bad, summary.written) == (210, 2, 208)
    assert any(p.startswith(f"{folder / 'a.csv'}:9:") for p in summary.skipped_report), summary.skipped_report
    assert any(p.startswith(f"{folder / 'b.jsonl'}:31:") for p in summary.skipped_report), summary.skipped_report
    remote = _ray_out(tmp_path / "ray")
    for name in ("a.csv", "b.jsonl"):
        local, report = _local(bundle, folder / name, tmp_path / f"{name}.parquet", options, cfg)
        assert report.bad == 1
        _same(local, [dict(r, id=r["id"][len(name) + 1:]) for r in remote if r["id"].startswith(f"{name}:")])

    # the driver reads the input before the cluster scores it: the first bad row in file order stops the job
    with pytest.raises(ToolkitError, match=rf"^{folder / 'a.csv'}:9: .*empty"):
        score_ray(str(bundle), str(folder), str(tmp_path / "ray2"), SourceOptions(), cfg, RayConfig())
    assert not (tmp_path / "ray2").exists()


def test_write_publishes_only_the_planned_ids_each_once(tmp_path, joined):
    """A part lost and another of its size written twice in its place (a retried write task, a lost
    block) keep the row count: not published, no temporary folder left; the planned parts, in any
    order, are published."""
    import dataclasses

    import numpy as np

    from toolkit.batch.outputs import part_table
    from toolkit.batch.ray_engine import RayConfig, _score_log, _write, plan_reads
    from toolkit.sources import PairSource

    src = write_pairs(tmp_path / "pairs.csv", _rows(30))
    options = dataclasses.replace(SourceOptions(), need_score=False, chunk_size=10)
    tasks, summary, planned = plan_reads([src], src, options)
    parts = [part_table(c, np.zeros(len(c)), ()) for c in PairSource(src, options).chunks()]
    assert len(tasks) == len(parts) == 3 and [p.num_rows for p in parts] == [10, 10, 10]
    log, out = _score_log(ray).remote(), tmp_path / "out"
    with pytest.raises(ToolkitError, match=r"out: wrote as many rows as the good ones read, but not the same ids"):
        _write(ray, ray.data.from_arrow([parts[0], parts[1], parts[1]]), out, log, summary, 1, RayConfig(), planned)
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.csv"]
    _write(ray, ray.data.from_arrow(parts[::-1]), out, log, summary, 1, RayConfig(), planned)
    assert summary.written == 30
    assert sorted(r["id"] for r in _ray_out(out)) == sorted(i for p in parts for i in p.column("id").to_pylist())


def test_refusals(tmp_path, joined, bundle, small_stsb):
    from toolkit.batch.ray_engine import RayConfig, score_ray

    cfg = ScoreConfig(progress=False)
    with pytest.raises(ToolkitError, match="folder of Parquet files"):
        score_ray(str(bundle), str(small_stsb["dev"]), str(tmp_path / "x.parquet"), SourceOptions(), cfg, RayConfig())
    with pytest.raises(ToolkitError, match="--shard is for the local engine"):
        score_ray(str(bundle), str(small_stsb["dev"]), str(tmp_path / "x"), SourceOptions(),
                  ScoreConfig(shard=(0, 2)), RayConfig())
    with pytest.raises(ToolkitError, match="no column 'text'"):
        score_ray(str(bundle), str(small_stsb["dev"]), str(tmp_path / "x"),
                  SourceOptions(columns=Columns(s1_col="text")), cfg, RayConfig())
    for address in ("http://head:8265", "head", "ray://head", "a b:1"):
        with pytest.raises(ToolkitError, match=r"^--address .*: expected auto, HOST:PORT or ray://HOST:PORT$"):
            score_ray(str(bundle), str(small_stsb["dev"]), str(tmp_path / "x"), SourceOptions(), cfg,
                      RayConfig(address=address))
    with pytest.raises(ToolkitError, match="no pair files"):
        (tmp_path / "empty").mkdir()
        score_ray(str(bundle), str(tmp_path / "empty"), str(tmp_path / "x"), SourceOptions(), cfg, RayConfig())


def test_without_ray_one_line(tmp_path, bundle, small_stsb):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(NO_RAY)}
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", "score", str(bundle), str(small_stsb["dev"]),
                           "-o", str(tmp_path / "out"), "--engine", "ray"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and 'pip install "sentence-pair-toolkit[ray]"' in proc.stderr


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
