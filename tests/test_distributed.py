"""The distributed path, for real: ``accelerate launch`` starting 2 CPU processes that form one gloo
world (checked inside the workers, not taken from what the launcher prints), DDP against a
single-process run of the same effective batch, DeepSpeed ZeRO-2 and ZeRO-3, resume after SIGKILL,
and the bad configurations that must fail at start."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from conftest import stsb_rows, write_pairs, write_stsb_slice
from safetensors.numpy import load_file

from toolkit.model.config import ModelConfig
from toolkit.scoring.metrics import evaluate_predictions
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.config import TrainConfig
from toolkit.training.loop import train
from toolkit.training.run_data import DataConfig
from toolkit.training.run_dir import load_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "launch" / "configs"
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "tests")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, script: Path, *args: str, extra: tuple[str, ...] = (), timeout: int = 600,
           env: Optional[dict] = None):
    """``accelerate launch`` as a user runs it, from the repository root (the configs' paths are relative)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
           "--main_process_port", str(free_port()), *extra, str(script), *args]
    return subprocess.run(cmd, cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def toolkit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolkit.cli", *args]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, stsb_dir) -> dict[str, Path]:
    """64 training pairs (4 global batches of 16) and an odd 61 dev pairs: sharded evaluation must
    pad, and then drop the padding again."""
    root = tmp_path_factory.mktemp("dist_pairs")
    return {"train": write_stsb_slice(root / "train.csv", "train", 64),
            "dev": write_stsb_slice(root / "dev.csv", "dev", 61)}


def single_process_metrics(run_dir: Path, dev: Path) -> dict:
    """The saved run, loaded and evaluated in this (single) process: the independent reference."""
    run = load_run(run_dir)
    gold, _ = read_pairs(dev, SourceOptions())
    pred = run.predictor(batch_size=16, device="cpu").predict(gold.s1, gold.s2)
    return evaluate_predictions(pred, gold.scores, ci=False)[0]


@pytest.fixture(scope="module")
def odd_pairs(tmp_path_factory, stsb_dir) -> dict[str, Path]:
    """203 training pairs: no batch size or world size divides them, so short batches happen."""
    root = tmp_path_factory.mktemp("odd_pairs")
    return {"train": write_stsb_slice(root / "train.csv", "train", 203),
            "dev": write_stsb_slice(root / "dev.csv", "dev", 40)}


def _per_epoch(seen: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for batch in seen:
        out.setdefault(batch["epoch"], []).extend(batch["indices"])
    return out


def _steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ragged_pairs(tmp_path_factory, stsb_dir) -> dict[str, Path]:
    """49 training pairs: at 16 a global batch, one batch holds a single pair, fewer than the
    processes, so one rank's slice of it is all filler."""
    root = tmp_path_factory.mktemp("ragged_pairs")
    return {"train": write_stsb_slice(root / "train.csv", "train", 49),
            "dev": write_stsb_slice(root / "dev.csv", "dev", 24)}


WORLD = {"model": {"max_length": 64, "dropout": 0.0},
         "train_cfg": {"epochs": 2, "lr": 2e-3, "patience": None, "metric": "mse", "eval_batch_size": 16}}
ODD = {"model": {"max_length": 48, "dropout": 0.0},
       "train_cfg": {"epochs": 2, "lr": 2e-3, "patience": None, "metric": "mse", "eval_batch_size": 32, "log_steps": 1}}
RANK = {"model": {"max_length": 48, "dropout": 0.0},
        "train_cfg": {"epochs": 2, "lr": 2e-3, "patience": 0, "eval_batch_size": 32, "log_steps": 1}}
RANK_CASES = [("cosent", 1), ("angle", 2)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, pairs, odd_pairs, ragged_pairs) -> Path:
    """One ``accelerate launch`` of 2 processes trains the runs of the three DDP tests below in turn
    (each launch costs both processes' start-up, seconds each); each test checks its own runs."""
    root = tmp_path_factory.mktemp("ddp")

    def run(tag: str, data: dict, kind: dict, **cfg) -> dict:
        return {"out": str(root / tag), "tag": f"-{tag}", "train": str(data["train"]), "dev": str(data["dev"]),
                "model": kind["model"], "train_cfg": {**kind["train_cfg"], **cfg}}

    runs = [run("world", pairs, WORLD, batch_size=8)]
    runs += [run(f"accum{accum}", odd_pairs, ODD, grad_accum=accum, batch_size=8) for accum in (1, 2)]
    runs += [run(loss, ragged_pairs, RANK, loss=loss, grad_accum=accum, batch_size=8) for loss, accum in RANK_CASES]
    proc = launch("cpu_2proc.yaml", WORKER, json.dumps({"runs": runs, "reports": str(root)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_ddp_two_processes_one_world_matches_single_process(tmp_path, pairs, ddp):
    reports = [json.loads((ddp / f"rank{r}-world.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["launcher_world_size"] == 2 for r in reports)
    assert reports[0]["digest"] == reports[1]["digest"]  # identical weights on both ranks after training
    assert reports[0]["dev_predictions"] == reports[1]["dev_predictions"]  # every rank gets the full gather

    run = ddp / "world"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2 and summary["per_device_batch"] == 8 and summary["effective_batch_size"] == 16
    log = (run / "train.log").read_text()
    assert "batch 8 per device x 2 processes x 1 accumulation = 16 effective" in log
    assert log.count("epoch 2 loss") == 1  # only the main process writes the log

    # gathered dev metrics (61 pairs over 2 ranks, padded) == this process's evaluation of the saved model
    assert len(reports[0]["dev_predictions"]) == 61
    reference = single_process_metrics(run, pairs["dev"])
    for key in ("spearman", "pearson", "mse"):
        assert summary["dev"][key] == pytest.approx(reference[key], abs=1e-5)

    # one process with the same effective batch: the same run, up to float summation order
    data = DataConfig(str(pairs["train"]), str(pairs["dev"]), SourceOptions())
    single = train(tmp_path / "single", data, ModelConfig(**WORLD["model"]),
                   TrainConfig(**WORLD["train_cfg"], batch_size=16)).summary
    assert single["processes"] == 1 and single["effective_batch_size"] == 16
    for a, b in zip(summary["history"][1:], single["history"][1:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        for key in ("spearman", "pearson", "mse"):
            assert a["dev"][key] == pytest.approx(b["dev"][key], abs=1e-4), (a["epoch"], key)


def test_ddp_trains_every_pair_once_per_epoch_and_follows_the_single_process_loss(tmp_path, odd_pairs, ddp):
    """N = 203, batch 8 per process x 2 processes, without and with accumulation (2 steps): every
    pair counts in exactly one batch of one rank per epoch, and each optimiser step's loss equals the
    single-process run's."""
    data = DataConfig(str(odd_pairs["train"]), str(odd_pairs["dev"]), SourceOptions())
    for accum in (1, 2):
        reports = [json.loads((ddp / f"rank{r}-accum{accum}.json").read_text()) for r in (0, 1)]
        assert reports[0]["digest"] == reports[1]["digest"]
        ranks = [_per_epoch(r["seen"]) for r in reports]
        for epoch in (1, 2):
            together = ranks[0][epoch] + ranks[1][epoch]
            assert sorted(together) == list(range(203)), f"accum {accum}, epoch {epoch}: pairs lost or counted twice"
        assert all(len(b["indices"]) <= 8 for r in reports for b in r["seen"])

        seen: list[dict] = []
        single = train(tmp_path / f"single{accum}", data, ModelConfig(**ODD["model"]),
                       TrainConfig(**ODD["train_cfg"], grad_accum=accum, batch_size=16),
                       observe=lambda b: seen.append({"epoch": b.epoch, "indices": b.indices})).summary
        assert all(sorted(ids) == list(range(203)) for ids in _per_epoch(seen).values())
        a, b = _steps(ddp / f"accum{accum}"), _steps(tmp_path / f"single{accum}")
        assert len(a) == len(b) == 2 * -(-13 // accum)  # ceil(203 / 16) global batches per epoch, by accum
        for x, y in zip(a, b):
            assert (x["step"], x["pairs"]) == (y["step"], y["pairs"])
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (accum, x["step"])
        assert sum(x["pairs"] for x in a) == 2 * 203
        summary = json.loads((ddp / f"accum{accum}" / "metrics.json").read_text())
        for x, y in zip(summary["history"][1:], single["history"][1:]):
            assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
            for key in ("spearman", "pearson", "mse"):
                assert x["dev"][key] == pytest.approx(y["dev"][key], abs=1e-4), (accum, x["epoch"], key)


def test_rank_losses_on_two_processes_rank_the_global_batch_as_one_process_does(tmp_path, ragged_pairs, ddp):
    """CoSENT/AnglE compare every two pairs of a batch: 2 processes x 8 must rank the global batch
    of 16, as 1 process x 16 does, not each process its own 8. Same loss per step and the same
    trained weights; AnglE with accumulation (2 batches a step), where one step is 16 + 1 pairs."""
    data = DataConfig(train=str(ragged_pairs["train"]), dev=str(ragged_pairs["dev"]), source=SourceOptions())
    for loss, accum in RANK_CASES:
        reports = [json.loads((ddp / f"rank{r}-{loss}.json").read_text()) for r in (0, 1)]
        assert reports[0]["digest"] == reports[1]["digest"]
        lone = [b for r in reports for b in r["seen"] if not b["indices"]]
        assert lone, "no batch left a rank with filler only: the edge this test is for did not occur"
        single = train(tmp_path / f"single-{loss}", data, ModelConfig(**RANK["model"]),
                       TrainConfig(**RANK["train_cfg"], loss=loss, grad_accum=accum, batch_size=16))
        a, b = _steps(ddp / loss), _steps(tmp_path / f"single-{loss}")
        assert len(a) == len(b) == 2 * -(-4 // accum)  # ceil(49 / 16) global batches per epoch, by accum
        for x, y in zip(a, b):
            assert (x["step"], x["pairs"]) == (y["step"], y["pairs"])
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-4), (loss, x["step"])
        ddp_weights = np.load(ddp / f"weights-{loss}.npz")
        ours = {n: p.detach().numpy() for n, p in single.model.named_parameters() if p.requires_grad}
        assert sorted(ddp_weights.files) == sorted(ours)
        # per tensor, relative to its size: Adam's step divides by sqrt(v), so an element whose gradient
        # is ~0 amplifies summation-order noise (seen: up to 7e-4 for AnglE, median 4e-6), while each
        # process ranking only its own slice moves whole tensors (median 0.6, up to 1.5)
        off = sorted((float(np.linalg.norm(ddp_weights[n] - v) / max(np.linalg.norm(v), 1e-12)), n)
                     for n, v in ours.items())
        assert off[len(off) // 2][0] < 1e-4 and off[-1][0] < 1e-2, (loss, off[-3:])


def test_rank_loss_gradient_on_two_processes_is_the_one_process_gradient(tmp_path):
    """The step's gradient itself (Adam hides a constant factor from the test above): under DDP, with
    the similarities gathered and the loop's scaling, the same as one process's on the whole batch,
    with accumulation and a micro-batch where one rank holds filler only."""
    spec = {"reports": str(tmp_path), "losses": ["cosent", "angle"]}
    proc = launch("cpu_2proc.yaml", Path(__file__).resolve().parent / "rank_grad_worker.py", json.dumps(spec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"grad{r}.json").read_text()) for r in (0, 1)]
    assert reports[0].keys() == reports[1].keys() == {"cosent-0", "cosent-1", "angle-0", "angle-1"}
    for report in reports:
        for case, grads in report.items():
            for ddp, alone in zip(grads["ddp"], grads["alone"]):
                assert np.abs(alone).max() > 1e-6, case  # a gradient worth comparing
                np.testing.assert_allclose(ddp, alone, rtol=1e-9, atol=1e-12, err_msg=case)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes_saves_a_loadable_adapter(tmp_path, pairs, stage):
    out, ops = tmp_path / f"zero{stage}", tmp_path / "torch_extensions"
    proc = launch(f"ds_zero{stage}.yaml", REPO / "launch" / "train.py",
                  "--train", str(pairs["train"]), "--dev", str(pairs["dev"]), "--out", str(out),
                  "--epochs", "2", "--batch-size", "8", "--lr", "2e-3", "--metric", "mse", "--patience", "0",
                  "--max-length", "64", "--eval-batch-size", "16",
                  extra=("--num_processes", "2", "--mixed_precision", "no"), env={"TORCH_EXTENSIONS_DIR": str(ops)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not ops.exists() or not any(ops.iterdir()), "DeepSpeed compiled an op training does not use"
    log = (out / "train.log").read_text()
    assert f"2 processes (deepspeed ZeRO-{stage}), device " in log and ", fp32" in log
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best_epoch"] >= 1  # trained weights were saved, not the untouched initial adapter
    tensors = load_file(out / "adapter" / "adapter.safetensors")
    assert tensors and all(t.size > 0 for t in tensors.values())  # gathered, not empty ZeRO-3 shards
    assert any(np.abs(t).max() > 0 for k, t in tensors.items() if "adapter_up" in k)
    reference = single_process_metrics(out, pairs["dev"])
    for key in ("spearman", "pearson", "mse"):
        assert summary["dev"][key] == pytest.approx(reference[key], abs=1e-5)


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["history"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    """A user's own file (its own column names, one file: the dev share held out), the run started with
    a relative path and resumed from another folder: the resume reads the same split, as recorded."""
    rows = [{"a": r[5], "b": r[6], "sim": float(r[4])} for r in stsb_rows("train", 120)]
    write_pairs(tmp_path / "own.csv", rows)
    args = ["--data", "own.csv", "--s1-col", "a", "--s2-col", "b", "--score-col", "sim", "--score-range", "0:5",
            "--dev-fraction", "0.2", "--epochs", "2", "--batch-size", "8", "--max-length", "64", "--patience", "0",
            "--save-steps", "3"]
    ref = subprocess.run([sys.executable, "-X", "importtime", *toolkit_cmd("train", *args, "--out", "ref")[1:]],
                         env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in ref.stderr.splitlines() if line.startswith("import time:")}
    assert "accelerate" in imported and "deepspeed" not in imported  # installed here, but this run does not use it
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["resolved"]["train_rows"] == 96

    run = tmp_path / "killed"
    proc = subprocess.Popen(toolkit_cmd("train", *args, "--out", "killed"), env=ENV, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = run / "checkpoint" / "trainer_state.json"
    try:
        while proc.poll() is None:  # 12 batches an epoch; a checkpoint every 3 steps
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):  # not there yet, or being swapped in
                state = {}
            if state.get("epoch") == 2 and state.get("batches_done", 0) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.3)  # kill between checkpoints, with batches trained after the last one
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "metrics.json").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run(toolkit_cmd("train", "--resume", str(run)), env=ENV, capture_output=True, text=True,
                             timeout=600, cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from checkpoint: epoch 2" in resumed.stderr + resumed.stdout
    a, b = _history(tmp_path / "ref"), _history(run)
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b] == [0, 1, 2]
    assert a[2]["train_loss"] == pytest.approx(b[2]["train_loss"], rel=1e-9)  # the interrupted epoch
    for x, y in zip(a, b):
        for key in ("spearman", "pearson", "mse", "mae"):
            assert x["dev"][key] == pytest.approx(y["dev"][key], rel=1e-9)
    assert (run / "train_log.jsonl").read_text().count('"epoch": 2') == 1
    assert not (run / "checkpoint").exists()  # removed once the run finished

    again = subprocess.run(toolkit_cmd("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2 and "no checkpoint to resume from (the run finished)" in again.stderr


def test_samples_per_second_after_a_mid_epoch_resume_counts_only_the_pairs_trained_since(tmp_path, small_stsb):
    """Killed after batch 5 of 6 in epoch 1 (checkpoint at batch 4), then resumed: epoch 1's rate
    is over the pairs this process trained (batches 5 and 6), not the epoch's 48, of which 32 came
    from the checkpoint; its loss is still the whole epoch's. Counted independently, by observe."""
    run = tmp_path / "run"
    args = ["--train", str(small_stsb["train"]), "--dev", str(small_stsb["dev"]), "--limit", "48", "--epochs", "2",
            "--batch-size", "8", "--max-length", "48", "--patience", "0", "--save-steps", "2", "--out", str(run)]
    killed = subprocess.run(toolkit_cmd("train", *args), env={**ENV, "TOOLKIT_CRASH_AT": "train.batch:5"},
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["batches_done"] == 4

    trained: dict[int, int] = {}
    data = DataConfig(train=str(small_stsb["train"]), dev=str(small_stsb["dev"]), source=SourceOptions(limit=48))
    cfg = TrainConfig(epochs=2, batch_size=8, patience=0, save_steps=2)
    result = train(run, data, ModelConfig(max_length=48), cfg, resume=True,
                   observe=lambda b: trained.__setitem__(b.epoch, trained.get(b.epoch, 0) + len(b.indices)))
    assert trained == {1: 16, 2: 48}
    history = result.summary["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for entry in history[1:]:
        assert entry["samples_per_s"] * entry["seconds"] == pytest.approx(trained[entry["epoch"]], rel=1e-9)
    steps = _steps(run)  # the loss of epoch 1 is over all its pairs, those before the kill included
    assert sum(s["pairs"] for s in steps if s["epoch"] == 1) == 48
    epoch1 = sum(s["loss"] * s["pairs"] for s in steps if s["epoch"] == 1) / 48
    assert history[1]["train_loss"] == pytest.approx(epoch1, rel=1e-9)


def _one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if message in line]
    # rank 0's unprefixed, rank 1's prefixed; whichever fails first, the launcher stops the other, which
    # may not have said it yet
    assert ours and all(line.startswith((message, "[rank 1] " + message)) for line in ours), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr.split("torch.distributed.elastic")[0].split(message)[0]


def test_bad_configurations_fail_at_start_with_one_line(tmp_path, pairs):
    base = ["--train", str(pairs["train"]), "--dev", str(pairs["dev"]), "--max-length", "32"]
    proc = launch("cpu_2proc.yaml", REPO / "launch" / "train.py", *base, "--global-batch-size", "9",
                  "--out", str(tmp_path / "a"))
    _one_line_error(proc, "--global-batch-size 9 is not divisible by 2 processes x 1 accumulation steps")
    assert not (tmp_path / "a").exists()

    config = (CONFIGS / "ds_zero2.yaml").read_text().replace("launch/configs/ds_zero2.json", str(tmp_path / "no.json"))
    (tmp_path / "ds.yaml").write_text(config)
    proc = launch(str(tmp_path / "ds.yaml"), REPO / "launch" / "train.py", *base, "--out", str(tmp_path / "b"),
                  extra=("--num_processes", "2", "--mixed_precision", "no"))
    _one_line_error(proc, f"DeepSpeed config file {tmp_path / 'no.json'} not found")

    fixed = json.loads((CONFIGS / "ds_zero2.json").read_text())
    fixed["train_micro_batch_size_per_gpu"] = 4
    (tmp_path / "fixed.json").write_text(json.dumps(fixed))
    (tmp_path / "fixed.yaml").write_text(config.replace(str(tmp_path / "no.json"), str(tmp_path / "fixed.json")))
    proc = launch(str(tmp_path / "fixed.yaml"), REPO / "launch" / "train.py", *base, "--out", str(tmp_path / "c"),
                  extra=("--num_processes", "2", "--mixed_precision", "no"), env={"PYTHONPROFILEIMPORTTIME": "1"})
    _one_line_error(proc, "the DeepSpeed config fixes train_micro_batch_size_per_gpu=4, but the training settings "
                          "give 16")
    # found from the launcher's environment, before any process loads the model stack (seconds each)
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "toolkit.cli" in imported and not imported & {"transformers", "adapters"}, sorted(imported)


def test_shipped_configs_parse_and_leave_our_settings_auto():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"one_gpu": ("NO", 1), "ddp_bf16": ("MULTI_GPU", 8), "ds_zero2": ("DEEPSPEED", 8),
                "ds_zero3": ("DEEPSPEED", 8), "multi_node_2x8": ("MULTI_GPU", 16), "cpu_2proc": ("MULTI_GPU", 2)}
    for name, (kind, processes) in expected.items():
        config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert (config.distributed_type.value, config.num_processes) == (kind, processes), name
        if kind == "DEEPSPEED":
            path = REPO / config.deepspeed_config["deepspeed_config_file"]
            ds = json.loads(path.read_text())
            assert ds["zero_optimization"]["stage"] == int(name[-1])
            for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                        "gradient_clipping"):
                assert ds[key] == "auto", (path.name, key)
            assert ds["optimizer"]["params"]["lr"] == "auto" and ds["scheduler"]["params"]["warmup_max_lr"] == "auto"
    assert load_config_from_file(str(CONFIGS / "multi_node_2x8.yaml")).num_machines == 2


def _train_args(pairs: dict, out: Path, *extra: str) -> list[str]:
    return ["--train", str(pairs["train"]), "--dev", str(pairs["dev"]), "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--max-length", "48", "--eval-batch-size", "32", "--patience", "0",
            "--save-steps", "2", "--resume-if-exists", *extra]


def _kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torch's launcher starts its workers in
    sessions of their own: killing its process group would leave them running)."""
    import psutil

    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_sigkilled_two_process_run_continues_when_the_same_command_is_rerun(tmp_path, odd_pairs):
    """What SLURM --requeue does: the whole job is killed mid-epoch, then the same command runs again."""
    ref = launch("cpu_2proc.yaml", REPO / "launch" / "train.py", *_train_args(odd_pairs, tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
           "--main_process_port", str(free_port()), str(REPO / "launch" / "train.py"), *_train_args(odd_pairs, run)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = run / "checkpoint" / "trainer_state.json"
    try:
        while proc.poll() is None:  # 13 batches an epoch, a checkpoint every 2 steps
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("epoch") == 2 and state.get("batches_done", 0) >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.4)
        _kill_tree(proc.pid)  # the launcher and both workers at once, as a scheduler's preemption does
        proc.wait()
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
    assert not (run / "metrics.json").exists()

    again = launch("cpu_2proc.yaml", REPO / "launch" / "train.py", *_train_args(odd_pairs, run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from checkpoint: epoch 2" in (run / "train.log").read_text()
    a, b = _history(tmp_path / "ref"), _history(run)
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b] == [0, 1, 2]
    for x, y in zip(a[1:], b[1:]):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-9)
    for x, y in zip(a, b):
        for key in ("spearman", "pearson", "mse", "mae"):
            assert x["dev"][key] == pytest.approx(y["dev"][key], rel=1e-9)
    ref_metrics, run_metrics = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", run))
    assert ref_metrics["best_epoch"] == run_metrics["best_epoch"]
    assert load_file(tmp_path / "ref" / "adapter" / "adapter.safetensors").keys() == \
        load_file(run / "adapter" / "adapter.safetensors").keys()
    for k, v in load_file(tmp_path / "ref" / "adapter" / "adapter.safetensors").items():
        np.testing.assert_array_equal(v, load_file(run / "adapter" / "adapter.safetensors")[k])
    assert _steps(tmp_path / "ref") == _steps(run)  # the loss log, rewritten from the checkpoint, not doubled

    done = launch("cpu_2proc.yaml", REPO / "launch" / "train.py", *_train_args(odd_pairs, run))  # finished: no-op
    assert done.returncode == 0 and "already finished" in done.stdout + done.stderr
    assert _history(run) == b
    other = ["train", *_train_args(odd_pairs, run, "--lr", "0.002")]  # one process, other settings: refused
    proc = subprocess.run(toolkit_cmd(*other), env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        f"{run / 'config.json'}: this run was started with other settings: train.lr (then: 0.001, now: 0.002); "
        "resolved.processes (then: 2, now: 1)")
