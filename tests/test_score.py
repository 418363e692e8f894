"""``toolkit score``: every format in and out, ids and order, bad rows, shards, and exactly-once
output when the process is SIGKILLed at several points and started again (against an
uninterrupted run, and against the bundle scoring all pairs in one call)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import stsb_rows

from toolkit.batch.config import ScoreConfig
from toolkit.batch.stream import score_file
from toolkit.common.errors import ToolkitError
from toolkit.scoring.onnx_bundle import Bundle
from toolkit.sources import Columns, SourceOptions
from toolkit.training.run_dir import load_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def models(small_models) -> dict[str, Path]:
    return small_models


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """300 STS-B test pairs with their own ids and genre, in every input format."""
    rows = [{"pair_id": f"p{i:04d}", "sentence1": r[5], "sentence2": r[6], "genre": r[0]}
            for i, r in enumerate(stsb_rows("test", 300))]
    root = tmp_path_factory.mktemp("score_pairs")
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "pairs.parquet", row_group_size=64)
    for ext, sep in ((".csv", ","), (".tsv", "\t")):
        import csv

        with open(root / f"pairs{ext}", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=sep)
            w.writeheader()
            w.writerows(rows)
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return {"rows": rows, "dir": root}


def _read(path: Path) -> list[tuple[str, float]]:
    ext = path.suffix
    if ext == ".parquet":
        t = pq.read_table(path)
        return list(zip(t.column("id").to_pylist(), t.column("score").to_pylist()))
    if ext == ".jsonl":
        return [(d["id"], d["score"]) for d in map(json.loads, path.read_text().splitlines())]
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [(r["id"], float(r["score"])) for r in csv.DictReader(f, delimiter="," if ext == ".csv" else "\t")]


# These tests are about the protocol (parts, kills, resumes) and compare runs of other batch sizes and threads
# exactly: one engine for all of them. What --runtime auto chooses is tested in test_runtimes.py.
ONNXRUNTIME = "onnxruntime"


def _score(model, src, out, chunk=40, **kw):
    options = SourceOptions(columns=Columns(id_col="pair_id"), need_score=False, policy=kw.pop("policy", "fail"))
    return score_file(str(model), str(src), str(out), options,
                      ScoreConfig(chunk_size=chunk, threads=2, progress=False, **{"runtime": ONNXRUNTIME, **kw}))


def test_every_format_in_and_out_keeps_ids_and_order(tmp_path, models, pairs):
    rows = pairs["rows"]
    reference = Bundle.load(models["bundle"], threads=2).predict([r["sentence1"] for r in rows],
                                                                [r["sentence2"] for r in rows])
    for ext_in, ext_out in ((".parquet", ".csv"), (".csv", ".jsonl"), (".tsv", ".parquet"), (".jsonl", ".tsv")):
        out = tmp_path / f"scores-{ext_in[1:]}{ext_out}"
        summary = _score(models["bundle"], pairs["dir"] / f"pairs{ext_in}", out, keep_cols=("genre",),
                         runtime="onnxruntime")  # the reference's engine (auto may serve bf16: test_runtimes.py)
        assert summary.written == summary.rows == 300 and summary.bad == 0
        got = _read(out)
        assert [i for i, _ in got] == [r["pair_id"] for r in rows]  # order and ids as given
        np.testing.assert_allclose([s for _, s in got], reference, atol=1e-5)
        assert not Path(str(out) + ".parts").exists()  # parts folder removed once assembled
        # the time split: every stage counted; the measured stages of each thread fit in the wall time
        # (a stage counted twice or across threads would not), and `other` is the main thread's remainder
        timing, wall = summary.timing, summary.seconds
        assert set(timing) == {"read", "tokenise", "write", "waited", "pad", "run", "other"}
        assert min(timing.values()) >= 0 and timing["run"] > 0
        slack = 0.01  # the wall time is on time.time(), the stages on time.perf_counter()
        measured = sum(timing[k] for k in ("waited", "pad", "run", "write"))
        assert measured <= wall + slack, (timing, wall)
        assert timing["read"] + timing["tokenise"] <= wall + slack, (timing, wall)  # the reader thread's
        assert timing["other"] == pytest.approx(max(wall - measured, 0.0), abs=1e-9)
        assert timing["other"] > 0  # loading the model and assembling the output lie outside the stages
        assert summary.time_split().startswith("time: read ") and " run " in summary.time_split()
    t = pq.read_table(tmp_path / "scores-tsv.parquet")
    assert t.column("genre").to_pylist() == [r["genre"] for r in rows]


def test_run_directory_backend_matches_pytorch_predictor(tmp_path, models, pairs):
    rows = pairs["rows"][:80]
    src = tmp_path / "few.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    _score(models["run"], src, tmp_path / "out.parquet")
    want = load_run(models["run"]).predictor(device="cpu").predict([r["sentence1"] for r in rows],
                                                                   [r["sentence2"] for r in rows])
    np.testing.assert_allclose([s for _, s in _read(tmp_path / "out.parquet")], want, atol=1e-6)


def test_bad_rows_fail_in_one_line_or_are_skipped_and_counted(tmp_path, models, pairs):
    rows = [dict(r) for r in pairs["rows"][:50]]
    rows[7]["sentence2"] = "   "
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ToolkitError, match=r"bad.jsonl:8: .*sentence2"):
        _score(models["bundle"], src, tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists()
    with pytest.raises(ToolkitError, match=r"unknown output format '\.txt'"):
        _score(models["bundle"], src, tmp_path / "scores.txt")
    summary = _score(models["bundle"], src, tmp_path / "b.parquet", policy="skip", restart=True)
    assert (summary.rows, summary.bad, summary.written) == (50, 1, 49)
    assert [i for i, _ in _read(tmp_path / "b.parquet")] == [r["pair_id"] for k, r in enumerate(rows) if k != 7]


def test_shards_union_equals_unsharded(tmp_path, models, pairs):
    src = pairs["dir"] / "pairs.parquet"
    _score(models["bundle"], src, tmp_path / "all.parquet", chunk=32)
    whole = _read(tmp_path / "all.parquet")
    union = []
    for i in range(3):
        _score(models["bundle"], src, f"{tmp_path / 'sharded'}/", chunk=32, shard=(i, 3))
    manifest_parts = sorted((tmp_path / "sharded").glob("shard-*-part-*.parquet"),
                            key=lambda p: int(p.stem.split("-")[-1]))
    for part in manifest_parts:
        union.extend(_read(part))
    assert union == whole  # same ids, same order once parts are sorted, bit-identical scores


def _cmd(model, src, out, *extra):
    return [sys.executable, "-m", "toolkit.cli", "score", str(model), str(src), "-o", str(out), "--id-col", "pair_id",
            "--chunk-size", "10", "--batch-size", "4", "--threads", "1", "--quiet", "--runtime", ONNXRUNTIME, *extra]


@pytest.mark.parametrize("kill_after_parts", [1, 9, 25])
def test_sigkill_then_rerun_writes_every_row_once(tmp_path, models, pairs, kill_after_parts):
    src = pairs["dir"] / "pairs.csv"
    ref = subprocess.run(_cmd(models["bundle"], src, tmp_path / "ref.parquet"), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "out.parquet"
    manifest = Path(str(out) + ".parts") / "manifest.json"
    proc = subprocess.Popen(_cmd(models["bundle"], src, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                done = len(json.loads(manifest.read_text())["parts"])
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= kill_after_parts:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.05 * kill_after_parts % 0.17)  # somewhere inside the next part
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    again = subprocess.run(_cmd(models["bundle"], src, out), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "parts resumed" in again.stderr
    assert _read(out) == _read(tmp_path / "ref.parquet")  # no lost id, no duplicate, identical scores


def test_changed_input_or_model_is_refused_unless_restart(tmp_path, models, pairs):
    src = tmp_path / "pairs.csv"
    src.write_bytes((pairs["dir"] / "pairs.csv").read_bytes())
    out = tmp_path / "o"
    proc = subprocess.Popen(_cmd(models["bundle"], src, f"{out}/"), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    manifest = out / "manifest.json"  # unsharded: no shard prefix
    while proc.poll() is None and not (manifest.is_file() and '"file"' in manifest.read_text()):
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    with open(src, "a", encoding="utf-8") as f:
        f.write("p9999,A new pair.,Another one.,main-news\n")
    again = subprocess.run(_cmd(models["bundle"], src, f"{out}/"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].endswith("pass --restart to discard its parts and start over")
    ok = subprocess.run(_cmd(models["bundle"], src, f"{out}/", "--restart"), env=ENV, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    ids = [i for p in sorted(out.glob("part-*.parquet")) for i, _ in _read(p)]
    assert ids == [r["pair_id"] for r in pairs["rows"]] + ["p9999"]


# -- exactly once under SIGKILL at any step ------------------------------------------------------------------
# Crash points (toolkit/common/failpoints.py) where the process kills itself, by phase of the job.
SCORING_POINTS = ("score.part-written", "score.part-renamed", "score.manifest-updated")


def _crash_seed() -> int:
    """A new plan every run; CRASH_SEED=N replays one."""
    return int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2 ** 32))


def _scoring_plan(rng: random.Random, parts: int, runs: int, most: int) -> list[str]:
    """``runs`` random scoring crash points, each reachable: a run killed at the k-th part written or
    renamed leaves k-1 parts done, one killed after the k-th manifest update leaves k; a part is
    always left for the next run to reach."""
    plan, left = [], parts
    for _ in range(runs):
        point, k = rng.choice(SCORING_POINTS), rng.randint(1, min(most, left))
        if point == "score.manifest-updated" and k == left:
            point = rng.choice(SCORING_POINTS[:2])
        left -= k if point == "score.manifest-updated" else k - 1
        plan.append(f"{point}:{k}")
    return plan


def _kill_chain(cmd: list[str], plan: list[str], seed: int) -> subprocess.CompletedProcess:
    """Run ``cmd`` once per crash point (each run must die there), then once to the end."""
    for point in plan:
        proc = subprocess.run(cmd, env={**ENV, "TOOLKIT_CRASH_AT": point}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == -signal.SIGKILL, \
            f"CRASH_SEED={seed} plan {plan}: {point} was not reached (exit {proc.returncode}) {proc.stderr[-800:]}"
    final = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, f"CRASH_SEED={seed} plan {plan}: {final.stderr[-2000:]}"
    return final


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith(".parquet")}


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory, pairs) -> Path:
    """120 pairs: 12 parts of 10."""
    path = tmp_path_factory.mktemp("crash") / "pairs.csv"
    path.write_text("\n".join((pairs["dir"] / "pairs.csv").read_text().splitlines()[:121]) + "\n")
    return path


@pytest.mark.parametrize("out_name", ["scores.parquet", "scores.csv"])
def test_sigkill_at_random_steps_then_rerun_gives_the_uninterrupted_output_byte_for_byte(
        tmp_path, models, small_pairs, out_name):
    ref = subprocess.run(_cmd(models["bundle"], small_pairs, tmp_path / "ref" / out_name), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    seed = _crash_seed()
    rng = random.Random(seed)
    plan = _scoring_plan(rng, parts=12, runs=4, most=3)
    plan += [f"score.assemble.part:{rng.randint(1, 12)}", "score.output-renamed:1", "score.manifest-complete:1",
             f"score.cleanup.part:{rng.randint(1, 12)}"]  # the final assembly, and between manifest and cleanup
    out = tmp_path / "out" / out_name
    final = _kill_chain(_cmd(models["bundle"], small_pairs, out), plan, seed)
    assert out.read_bytes() == (tmp_path / "ref" / out_name).read_bytes(), f"CRASH_SEED={seed} plan {plan}"
    assert not Path(str(out) + ".parts").exists(), final.stderr  # parts and manifest removed, none left over
    assert sorted(p.name for p in out.parent.iterdir()) == [out_name]


def test_sigkill_at_random_steps_of_a_shard_then_rerun_gives_the_same_shard(tmp_path, models, small_pairs):
    ref = subprocess.run(_cmd(models["bundle"], small_pairs, f"{tmp_path / 'ref'}/", "--shard", "1/3"), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    seed = _crash_seed()
    rng = random.Random(seed)
    plan = _scoring_plan(rng, parts=4, runs=7, most=2) + ["score.manifest-complete:1"]
    out = tmp_path / "out"
    _kill_chain(_cmd(models["bundle"], small_pairs, f"{out}/", "--shard", "1/3"), plan, seed)
    assert _folder_bytes(out) == _folder_bytes(tmp_path / "ref"), f"CRASH_SEED={seed} plan {plan}"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    manifest = json.loads((out / "shard-001-of-003-manifest.json").read_text())
    assert manifest["complete"] and manifest["parts"] == \
        json.loads((tmp_path / "ref" / "shard-001-of-003-manifest.json").read_text())["parts"]


def test_restart_removes_every_earlier_part_even_when_killed_midway(tmp_path, models, small_pairs):
    """An earlier sharded attempt with other settings fills the folder; an unsharded --restart is
    killed while it clears it and while it scores; reruns finish it: only its own parts remain."""
    ref = subprocess.run(_cmd(models["bundle"], small_pairs, f"{tmp_path / 'ref'}/"), env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        old = subprocess.run(_cmd(models["bundle"], small_pairs, f"{out}/", "--shard", shard, "--batch-size", "8"),
                             env=ENV, capture_output=True, text=True, timeout=600)
        assert old.returncode == 0, old.stderr[-2000:]
    assert len(list(out.glob("shard-*-part-*.parquet"))) == 12
    seed = _crash_seed()
    rng = random.Random(seed)
    restart = _cmd(models["bundle"], small_pairs, f"{out}/", "--restart")
    plan = ["score.manifest-new:1", f"score.part-removed:{rng.randint(1, 11)}"]
    for point in plan:
        proc = subprocess.run(restart, env={**ENV, "TOOLKIT_CRASH_AT": point}, capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, f"CRASH_SEED={seed}: {point} not reached {proc.stderr[-800:]}"
    scoring = _scoring_plan(rng, parts=12, runs=6, most=3)
    _kill_chain(_cmd(models["bundle"], small_pairs, f"{out}/"), scoring, seed)  # the rerun resumes the restart
    assert _folder_bytes(out) == _folder_bytes(tmp_path / "ref"), f"CRASH_SEED={seed} plan {plan + scoring}"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_a_datasets_folder_scores_as_its_jsonl_copy_and_resumes(tmp_path, models):
    """A datasets save_to_disk folder (3 Arrow files, a bad row skipped) scores as the same rows in
    JSONL; killed after its 2nd part, a rerun resumes and ends identical; a changed Arrow file is refused."""
    hf = Path(__file__).resolve().parent / "corpus" / "hf_dataset"
    folder = tmp_path / "pairs"
    shutil.copytree(hf / "pairs", folder)
    ref = _score(models["bundle"], hf / "pairs.jsonl", tmp_path / "ref.parquet", chunk=10, policy="skip")
    assert ref.written == 39 and ref.bad == 1  # scoring reads no score: only the empty sentence is bad
    out = tmp_path / "out.parquet"
    cmd = _cmd(models["bundle"], folder, out, "--skip-bad-rows")
    final = _kill_chain(cmd, ["score.manifest-updated:2"], seed=0)
    assert "2 parts resumed" in final.stderr
    assert _read(out) == _read(tmp_path / "ref.parquet")
    out.unlink()
    killed = subprocess.run(cmd, env={**ENV, "TOOLKIT_CRASH_AT": "score.manifest-updated:1"}, capture_output=True,
                            text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    arrow = folder / "data-00002-of-00003.arrow"
    arrow.write_bytes(arrow.read_bytes())  # same bytes, new modification time: the input may have changed
    refused = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "pass --restart" in refused.stderr


# -- one job per output; no thread left behind -------------------------------------------------------------
@contextmanager
def _held(cmd: list[str], point: str) -> Iterator[tuple[subprocess.Popen, Callable[[], None]]]:
    """A job started with ``cmd`` and held still at its TOOLKIT_STOP_AT ``point`` (its lock taken)
    while the block runs: (the process, a call that lets it finish and checks it exits 0). A job
    still there when the block leaves (a failed assertion) is killed."""
    import psutil

    proc = subprocess.Popen(cmd, env={**ENV, "TOOLKIT_STOP_AT": point}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

    def finish() -> None:
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]

    try:
        deadline = time.monotonic() + 300
        while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
            assert proc.poll() is None, f"exited ({proc.returncode}) before its stop point"
            assert time.monotonic() < deadline, "never reached its stop point"
            time.sleep(0.01)
        yield proc, finish
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _refused_by(proc: subprocess.CompletedProcess, out: object) -> str:
    """The one-line refusal of a job started on an output another job holds."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith(f"{out}: another toolkit score job is writing it ("), line
    assert line.endswith("wait for it to finish or stop it, then run this again") and "--restart" not in line, line
    return line


def test_a_second_job_on_an_output_is_refused_while_the_first_runs(tmp_path, models, small_pairs):
    """Two jobs on one output (a requeued job whose first instance still runs, enter pressed twice): the
    second, with or without --restart, is refused in one line naming the first and touches nothing; the
    first ends with the output it writes alone, and nothing but it is left. Started after the first has
    ended, the second is an ordinary rerun."""
    out = tmp_path / "out" / "scores.parquet"
    cmd = _cmd(models["bundle"], small_pairs, out)
    with _held(cmd, "score.manifest-updated:2") as (first, finish):  # two parts and the manifest written
        parts = Path(f"{out}.parts")
        held = {p.name: p.read_bytes() for p in parts.iterdir()}
        for extra in ([], ["--restart"]):
            second = subprocess.run(cmd + extra, env=ENV, capture_output=True, text=True, timeout=600)
            line = _refused_by(second, out)
            assert f"(pid {first.pid} on " in line and "score" in line, line
        assert {p.name: p.read_bytes() for p in parts.iterdir()} == held
        finish()
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]  # no parts, no lock file
    ref = score_file(str(models["bundle"]), str(small_pairs), str(tmp_path / "ref.parquet"),
                     SourceOptions(columns=Columns(id_col="pair_id"), need_score=False),
                     ScoreConfig(chunk_size=10, batch_size=4, threads=1, progress=False, runtime=ONNXRUNTIME))
    got, want = _read(out), _read(tmp_path / "ref.parquet")
    assert ref.written == 120 and [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
    published = out.read_bytes()
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and again.stderr.strip().endswith(
        "already exists (a finished output); pass --restart to score it again"), again.stderr[-2000:]
    assert out.read_bytes() == published and sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]


def test_shards_of_a_folder_run_side_by_side_and_other_jobs_on_it_are_refused(tmp_path, models, small_pairs):
    """Shards of one output folder run at once; the same shard again, an unsharded job (its --restart
    would remove every shard's parts) and a Ray job on the folder are refused; no lock file outlives them."""
    from toolkit.batch.ray_engine import RayConfig, score_ray

    out = tmp_path / "out"

    def shard(which: str, *extra: str) -> list[str]:
        return _cmd(models["bundle"], small_pairs, f"{out}/", "--shard", which, *extra)

    with _held(shard("0/2"), "score.manifest-updated:1") as (first, finish):
        other = subprocess.run(shard("1/2"), env=ENV, capture_output=True, text=True, timeout=600)
        assert other.returncode == 0, other.stderr[-2000:]
        same = _refused_by(subprocess.run(shard("0/2"), env=ENV, capture_output=True, text=True, timeout=600), out)
        assert f"(pid {first.pid} on " in same
        for cmd in (_cmd(models["bundle"], small_pairs, f"{out}/"),
                    _cmd(models["bundle"], small_pairs, f"{out}/", "--restart")):
            line = _refused_by(subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600), out)
            assert "jobs scoring shards of it hold it" in line
        with pytest.raises(ToolkitError, match=r"another toolkit score job is writing it \(jobs scoring shards"):
            score_ray(str(models["bundle"]), str(small_pairs), str(out), SourceOptions(),
                      ScoreConfig(progress=False, restart=True), RayConfig())
        finish()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no lock file beside it
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"shard-00{i}-of-002-manifest.json" for i in (0, 1)]
                           + [f"shard-00{k % 2}-of-002-part-{k:05d}.parquet" for k in range(12)])


def test_a_lock_file_that_names_no_job_still_refuses(tmp_path):
    """A job caught between taking the lock and writing its name (or a file that cannot be read) is
    still another job: refused, in one line, naming the lock file."""
    from toolkit.common.atomic_io import OutputBusyError, lock_path, output_lock

    out = tmp_path / "scores.parquet"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint(flush=True)\ntime.sleep(600)",
                               str(lock_path(out))], stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()
        with pytest.raises(OutputBusyError) as refused:
            with output_lock(out):
                pass
        assert str(refused.value) == (f"{out}: another toolkit score job is writing it (its lock file "
                                      f"{lock_path(out)} does not say which yet); wait for it to finish or stop "
                                      "it, then run this again")
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # its flock went with it: the file it left is taken over, then removed
        assert lock_path(out).is_file()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_call_leaves_no_reader_thread_and_no_open_input(tmp_path, models, pairs):
    """In a long-lived process (a notebook, a service) a call that fails, in the reader (a bad row) or
    in the main loop while the reader is ahead (interrupted: here by a signal once the first part is
    written), leaves no thread blocked on the queue and the input file closed. The process is a fresh
    interpreter: in one that has run OpenVINO (test_runtimes.py, earlier in this session) the interrupted
    call crashed the process (SIGSEGV, OpenVINO 2026.4.1), which is not what this test is about."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_score; "
            f"test_score._failed_calls_leave_nothing({str(models['bundle'])!r}, {str(pairs['dir'])!r}, "
            f"{str(tmp_path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("no thread left, no input open")


def _failed_calls_leave_nothing(bundle: str, pairs_dir: str, tmp: str) -> None:
    import psutil

    tmp_path, models = Path(tmp), {"bundle": Path(bundle)}
    pairs = {"dir": Path(pairs_dir), "rows": [json.loads(line) for line in
                                             (Path(pairs_dir) / "pairs.jsonl").read_text().splitlines()]}

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    rows = [dict(r) for r in pairs["rows"][:60]]
    rows[50]["sentence1"] = ""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good = pairs["dir"] / "pairs.jsonl"

    def threads() -> set[threading.Thread]:
        # but tqdm's monitor: one per process, started by the first bar (a disabled one too), kept
        return {t for t in threading.enumerate() if t.name != "tqdm_monitor"}

    before = threads()
    with pytest.raises(ToolkitError, match=r"bad.jsonl:51: "):
        _score(models["bundle"], bad, tmp_path / "bad.parquet", chunk=5)
    out = tmp_path / "good"
    ended = threading.Event()

    def watch() -> None:
        while not ended.is_set():
            if (out / "part-00000.parquet").exists():
                # to the main thread itself: a process-directed signal may land on any thread, and the worker
                # threads of a library loaded earlier in this process (OpenVINO's) crash on it
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return
            time.sleep(0.001)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(Interrupted):
            _score(models["bundle"], good, f"{out}/", chunk=5)  # 60 parts: the signal comes in the loop
    finally:
        ended.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
    assert len(list(out.glob("part-*.parquet"))) < 60  # it did fail midway
    assert threads() == before
    open_files = {os.path.realpath(f.path) for f in psutil.Process().open_files()}
    assert not open_files & {os.path.realpath(bad), os.path.realpath(good)}, open_files
    print("no thread left, no input open")
