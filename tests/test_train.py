"""Training on small real slices: it learns, it is reproducible, and what it saves is what it measured."""
from __future__ import annotations

import json

import numpy as np
import pytest

from toolkit.common.errors import ToolkitError
from toolkit.model.config import ModelConfig
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.config import TrainConfig
from toolkit.training.loop import train
from toolkit.training.run_data import DataConfig
from toolkit.training.run_dir import load_run


def run_train(out, small_stsb, limit=None, **kw):
    model_kw = {k: kw.pop(k) for k in ("arch", "adapter") if k in kw}
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=limit))
    return train(out, data, ModelConfig(max_length=64, **model_kw), TrainConfig(**kw))


@pytest.mark.parametrize("arch", ["cross", "bi"])
def test_short_training_lowers_dev_mse(tmp_path, small_stsb, arch):
    result = run_train(tmp_path / arch, small_stsb, limit=64, arch=arch, epochs=2, patience=0, metric="mse",
                       lr=2e-3 if arch == "cross" else 1e-3)
    history = result.summary["history"]
    before, after = history[0]["dev"]["mse"], min(h["dev"]["mse"] for h in history[1:])
    assert after < before * (0.5 if arch == "cross" else 0.95), (before, after)
    assert result.summary["best_epoch"] >= 1


def test_same_seed_same_result_other_seed_differs(tmp_path, small_stsb):
    a = run_train(tmp_path / "a", small_stsb, limit=32, epochs=1, seed=3).summary
    b = run_train(tmp_path / "b", small_stsb, limit=32, epochs=1, seed=3).summary
    c = run_train(tmp_path / "c", small_stsb, limit=32, epochs=1, seed=4).summary
    assert a["history"][1]["train_loss"] == b["history"][1]["train_loss"]
    assert a["history"][1]["dev"] == b["history"][1]["dev"]
    assert a["history"][1]["train_loss"] != c["history"][1]["train_loss"]


def test_saved_run_reproduces_its_dev_predictions(tmp_path, small_stsb):
    out = tmp_path / "run"
    result = run_train(out, small_stsb, limit=64, arch="cross", adapter="lora", epochs=2, lr=2e-3)
    run = load_run(out)
    dev, _ = read_pairs(small_stsb["dev"], SourceOptions(limit=64))
    np.testing.assert_array_equal(run.predictor().predict(dev.s1, dev.s2), result.dev_predictions)
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["adapter"] == "lora" and config["base_model"]["name"] == "all-MiniLM-L6-v2"
    assert config["labels"] == {"kind": "range", "offset": 0.0, "scale": 5.0}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dev"]["spearman"] == result.summary["dev"]["spearman"]
    assert len(metrics["dev"]["spearman_ci95"]) == 2
    lines = (out / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(len(lines)))


def test_zscore_labels_for_cross_without_range(tmp_path, small_stsb):
    result = run_train(tmp_path / "z", small_stsb, limit=48, arch="cross", epochs=1, normalize="zscore")
    config = json.loads((tmp_path / "z" / "config.json").read_text())
    train_pairs, _ = read_pairs(small_stsb["train"], SourceOptions(limit=48))
    assert config["labels"]["kind"] == "zscore"
    assert config["labels"]["offset"] == pytest.approx(train_pairs.scores.mean())
    assert config["labels"]["scale"] == pytest.approx(train_pairs.scores.std())
    assert result.summary["dev"]["n"] == 48  # --limit applies to every file read


def test_refuses_to_overwrite_and_bad_settings(tmp_path, small_stsb, monkeypatch):
    run_train(tmp_path / "r", small_stsb, limit=16, epochs=1)
    with pytest.raises(ToolkitError, match="already holds a run"):
        run_train(tmp_path / "r", small_stsb, limit=16, epochs=1)
    with pytest.raises(ToolkitError, match="fp16 asked, but there is no GPU"):
        run_train(tmp_path / "p", small_stsb, limit=16, precision="fp16")
    with pytest.raises(ToolkitError, match="--arch bi maps the cosine"):
        run_train(tmp_path / "q", small_stsb, limit=16, arch="bi", normalize="zscore")
    with pytest.raises(ToolkitError, match="--global-batch-size 30 is not divisible by 1 processes x 4 accumulation"):
        run_train(tmp_path / "g", small_stsb, limit=16, global_batch_size=30, grad_accum=4)


def test_bf16_on_cpu(tmp_path, small_stsb, monkeypatch):
    import toolkit.training.distributed

    if toolkit.training.distributed.cpu_has_bf16():  # this machine's AMD EPYC has AVX512-BF16: bf16 trains
        result = run_train(tmp_path / "b", small_stsb, limit=32, epochs=1, precision="bf16")
        assert result.summary["history"][1]["train_loss"] > 0
    monkeypatch.setattr(toolkit.training.distributed, "cpu_has_bf16", lambda: False)  # a CPU without it
    with pytest.raises(ToolkitError, match="bf16 asked, but this CPU has no bf16 support"):
        run_train(tmp_path / "c", small_stsb, limit=16, precision="bf16")


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``, read from the TFRecord framing
    (u64 length, u32 crc, Event proto, u32 crc) with the Event proto tensorboardX ships."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_log_with_tensorboard_writes_loss_lr_and_every_dev_metric(tmp_path, small_stsb):
    pytest.importorskip("tensorboardX", reason="the tracking extra is not installed")
    out = tmp_path / "tb"
    run_train(out, small_stsb, limit=48, epochs=2, batch_size=8, log_steps=2, patience=0, log_with="tensorboard")
    scalars = _tensorboard_scalars(out / "trackers")
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["train/loss"]] == [e["step"] for e in steps]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [e["loss"] for e in steps], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/lr"]], [e["lr"] for e in steps], rtol=1e-6)
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    for metric in ("spearman", "pearson", "mse", "rmse", "mae"):
        got = [v for _, v in scalars[f"dev/{metric}"]]
        np.testing.assert_allclose(got, [h["dev"][metric] for h in history], rtol=1e-6)  # epochs 0 (zero-shot), 1, 2


def test_log_with_an_unknown_or_missing_tracker_is_refused(tmp_path, small_stsb):
    with pytest.raises(ToolkitError, match=r"--log-with tensorbord: not a tracker accelerate knows; choose one of .*"
                                           r"tensorboard"):
        run_train(tmp_path / "x", small_stsb, limit=16, epochs=1, log_with="tensorbord")
    assert not (tmp_path / "x").exists()
