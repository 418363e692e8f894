"""``toolkit score --engine ray`` on a local Ray instance (2 CPUs) started here: the same ids and
scores as the local engine (one file in parts, a folder of files in two formats, kept columns),
bad rows under both policies, refusals, and the one-line message without Ray."""
from __future__ import annotations

import json
import os
import subprocess
import sys
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
NO_RAY = Path(__file__).resolve().parent / "no_ray"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
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


def test_one_file_in_parts_equals_the_local_engine(tmp_path, local_ray, bundle):
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


def test_folder_of_files_and_bad_rows(tmp_path, local_ray, bundle):
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


def test_write_publishes_only_the_planned_ids_each_once(tmp_path, local_ray):
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


def test_refusals(tmp_path, local_ray, bundle, small_stsb):
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
