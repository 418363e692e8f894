"""Shared fixtures: the real STS-B release beside the repo, small slices of it in every format."""
from __future__ import annotations

import atexit
import csv
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The toolkit's cache (what --runtime auto measured, torch's ONNX exports): this test session's own, not
# the user's, so that no earlier choice decides a test. Made by pytest (which loads this file before it
# starts pytest-xdist's workers) and inherited by the workers and every process they start: a model one
# worker exported is not exported again by another.
if not os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["TOOLKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="toolkit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TOOLKIT_CACHE_DIR"], ignore_errors=True)
# Without a GPU the Triton kernels run in Triton's interpreter; it is chosen when a kernel is
# defined, so it must be set before anything imports toolkit.kernels (the kernels/ folder).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Under pytest-xdist the workers share the machine's cores: one thread each (and in the processes
# they start), rather than every worker's torch and ONNX Runtime spreading over all cores at once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

STSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb"

# The longest modules first (measured: benchmarks/RESULTS.md, "The test suite's time"), the rest in their
# own order. pytest-xdist's --dist loadfile hands a worker the next module once its current one has two
# tests left, in this order (pyproject.toml's --no-loadscope-reorder: by default it sorts modules by their
# number of tests, which put the one-test modules last): the modules that are one long test (the base
# install's main job, the README's Python block) go early, so that no core waits at the end for one.
LONGEST_FIRST = ("test_base_install", "test_distributed", "test_wise", "test_api", "test_export",
                 "test_score_ray", "test_gpu_suite", "test_score", "test_own_data", "test_cli", "test_train",
                 "test_kernels", "test_search", "test_fuzz_sources", "test_packaging",
                 "test_runtimes", "test_model")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: a module's own order kept


def stsb_rows(split: str, n: int | None = None) -> list[list[str]]:
    """First n rows of a split as the release has them (first seven fields)."""
    rows = []
    with open(STSB / f"sts-{split}.csv", encoding="utf-8") as f:
        for line in f:
            rows.append(line.rstrip("\n").split("\t")[:7])
            if n is not None and len(rows) == n:
                break
    return rows


@pytest.fixture(scope="session")
def stsb_dir() -> Path:
    if not STSB.is_dir():
        pytest.fail(f"STS-B release not found at {STSB} (../shared/data/stsb beside the repo)")
    return STSB


def write_stsb_slice(path: Path, split: str, n: int) -> Path:
    """A header-less slice in the release layout (tab-separated, seven fields)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in stsb_rows(split, n):
            f.write("\t".join(r) + "\n")
    return path


def write_pairs(path: Path, rows: list[dict]) -> Path:
    """Write dict rows in the format the extension names."""
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if suffix == ".csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".db":
        con = sqlite3.connect(path)
        cols = list(rows[0])
        con.execute(f"CREATE TABLE pairs ({', '.join(cols)})")
        con.executemany(f"INSERT INTO pairs VALUES ({', '.join('?' * len(cols))})", [tuple(r.values()) for r in rows])
        con.commit()
        con.close()
    else:
        raise ValueError(suffix)
    return path


def dict_rows(split: str, n: int) -> list[dict]:
    return [{"sentence1": r[5], "sentence2": r[6], "score": float(r[4]), "genre": r[0]} for r in stsb_rows(split, n)]


def cli_here(capsys, *args, check: bool = True) -> subprocess.CompletedProcess:
    """``toolkit ARGS`` through the CLI's own entry point, in this process: its exit code and console
    output, as a process of its own gives them, without the ~5 s each such process spends importing
    the model stack. Tests of start-up itself (library warnings, a blocked import, a kill) start one."""
    from toolkit.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"toolkit {' '.join(map(str, args))} exited {code}:\n{err[-3000:]}")
    return subprocess.CompletedProcess(["toolkit", *map(str, args)], code, out, err)


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder made once per test session by whichever pytest-xdist worker asks first; the others
    wait for it and use the same one (the session's fixtures, not one copy per worker)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def small_stsb(tmp_path_factory, stsb_dir) -> dict[str, Path]:
    """Train/dev slices in the release layout, small enough for quick training tests."""
    sizes = {"train": 240, "dev": 120, "test": 80}
    root = shared_folder(tmp_path_factory, "stsb_small", lambda folder: [
        write_stsb_slice(folder / f"{split}.csv", split, n) for split, n in sizes.items()])
    return {split: root / f"{split}.csv" for split in sizes}


@pytest.fixture(scope="session")
def small_models(tmp_path_factory, small_stsb) -> dict[str, Path]:
    """A bi-encoder (seq_bn) trained one epoch on 48 pairs, and its fp32 bundle: what the scoring
    tests (local and Ray engines) score with."""
    from toolkit.artifacts.onnx_export import ExportConfig, export_onnx
    from toolkit.model.config import ModelConfig
    from toolkit.sources import SourceOptions
    from toolkit.training.config import TrainConfig
    from toolkit.training.loop import train
    from toolkit.training.run_data import DataConfig

    def build(root: Path) -> None:
        data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=48))
        train(root / "run", data, ModelConfig(max_length=48),
              TrainConfig(epochs=1, batch_size=8, lr=5e-3, patience=0))
        export_onnx(root / "run", root / "bundle", ExportConfig(verify_data=str(small_stsb["dev"]), threads=2),
                    say=lambda line: None)

    root = shared_folder(tmp_path_factory, "small_models", build)
    return {"run": root / "run", "bundle": root / "bundle"}


# Selection rules recomputed from what a run records, for tests that check the recorded choice: written
# out here rather than taken from toolkit (train.py, wise.choose_alpha), so that a slip there shows.
HIGHER_BETTER = {"spearman": True, "pearson": True, "mse": False, "rmse": False, "mae": False}


def best_epoch_by_history(metrics: dict) -> int:
    """The epoch whose dev metric in metrics.json's history is best. Epoch 0 (before training) is the
    first best and a later epoch replaces it only when strictly better, so ties go to the earliest."""
    metric = metrics["metric"]
    sign = 1.0 if HIGHER_BETTER[metric] else -1.0
    scored = [(h["epoch"], sign * h["dev"][metric]) for h in metrics["history"] if h["dev"].get(metric) is not None]
    best = max(v for _, v in scored)
    return next(epoch for epoch, v in scored if v == best)


def alpha_by_rule(records: list[dict], on_set: str, metric: str = "spearman", tie: float = 0.001) -> float:
    """The README's WiSE-FT choice from results.jsonl's records: the best ``metric`` in weight space on
    the set α is chosen on, and among the α within ``tie`` of it the smallest."""
    rows = [(r["alpha"], r[metric]) for r in records
            if r["mode"] == "weights" and r["set"] == on_set and r.get(metric) is not None]
    sign = 1.0 if HIGHER_BETTER[metric] else -1.0
    best = max(sign * v for _, v in rows)
    return min(alpha for alpha, v in rows if sign * v >= best - tie)


def assert_recorded_choices(run: Path, wise_dir: Path) -> None:
    """A one-epoch run and its α = 0, 0.5, 1 sweep chosen with the defaults: the best epoch and the
    chosen α are the ones their recorded metrics make best by the rules above, and the dev metrics
    kept are the best epoch's."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]  # before training, then the one epoch
    best, metric = metrics["best_epoch"], metrics["metric"]
    assert best == best_epoch_by_history(metrics), metrics["history"]
    assert metrics["dev"][metric] == pytest.approx(metrics["history"][best]["dev"][metric], abs=1e-9)
    wise = json.loads((wise_dir / "config.json").read_text())["wise"]
    records = [json.loads(line) for line in (wise_dir / "results.jsonl").read_text().splitlines()]
    assert sorted({r["alpha"] for r in records}) == [0.0, 0.5, 1.0]
    assert (wise["metric"], wise["tie"], wise["chosen_on_role"]) == ("spearman", 0.001, "id")  # the defaults
    assert wise["alpha"] == alpha_by_rule(records, wise["chosen_on_set"]), records
