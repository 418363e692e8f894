"""The README's Python block, run as it stands (only the data folder pointed at this machine's),
and checked against the CLI's and the loaded run's own outputs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import assert_recorded_choices, cli_here

REPO = Path(__file__).resolve().parents[1]


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_block_runs(tmp_path, stsb_dir, capsys):
    data = tmp_path / "stsb"  # the release's layout, 128 pairs of each split: every stage in CI's minutes
    data.mkdir()
    for split in ("train", "dev", "test"):
        lines = (stsb_dir / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines(keepends=True)
        (data / f"sts-{split}.csv").write_text("".join(lines[:128]), encoding="utf-8")
    code = _readme_block().replace("../shared/data/stsb", str(data))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    pair_score = float(next(line for line in printed if re.fullmatch(r"\[[0-9. ]+\]", line)).strip("[]"))
    spearman = float(next(line for line in printed if re.fullmatch(r"0\.[0-9]+", line)))
    assert 3.0 < pair_score <= 5.5 and 0.5 < spearman < 1  # a near-paraphrase; a model that learned something
    runs = tmp_path / "runs"
    assert_recorded_choices(runs / "quick", runs / "quick-wise")
    assert pq.read_metadata(runs / "quick-test.parquet").num_rows == 128
    cli = cli_here(capsys, "predict", runs / "quick", "A plane is taking off.", "An air plane is taking off.")
    assert float(cli.stdout) == pytest.approx(pair_score, abs=1e-4)  # the CLI prints 4 decimals


def test_unknown_or_mistyped_option_is_refused_in_one_line(tmp_path):
    import toolkit
    from toolkit.common.errors import ToolkitError

    with pytest.raises(ToolkitError, match=r"unknown option 'epoch'; valid: .*\bepochs\b"):
        toolkit.train(train="a.csv", dev="b.csv", out=tmp_path / "x", epoch=1)
    for option, message in [({"epochs": "3x"}, "epochs='3x': expected int"),
                            ({"adapter": "lorra"}, "adapter='lorra': expected one of 'seq_bn', 'double_seq_bn'"),
                            ({"score_range": (0, "5")}, "score_range=(0, '5'): expected a list of 2")]:
        with pytest.raises(ToolkitError, match=re.escape(message)):  # a wrong type: one line, before any work
            toolkit.train(train="a.csv", dev="b.csv", out=tmp_path / "x", **option)


def test_the_api_names_are_functions_and_no_module_shadows_them():
    import importlib.util

    import toolkit

    for name in toolkit.API:
        assert callable(getattr(toolkit, name)), name
        assert importlib.util.find_spec(f"toolkit.{name}") is None, name  # no submodule of the same name


def test_load_predicts_a_list_of_pairs_and_two_lists_alike(small_models):
    import toolkit

    for path in small_models.values():  # a run (PyTorch) and its bundle (ONNX Runtime)
        model = toolkit.load(path)
        pairs = [("A man is playing a guitar.", "A man plays the guitar."), ("A cat sleeps.", "Stocks fell.")]
        a = model.predict(pairs)
        b = model.predict([p[0] for p in pairs], [p[1] for p in pairs])
        assert isinstance(a, np.ndarray) and a.shape == (2,) and np.array_equal(a, b)


def test_config_objects_and_keywords_together(tmp_path):
    import toolkit
    from toolkit.common.errors import ToolkitError
    from toolkit.options import configs
    from toolkit.sources import Columns, SourceOptions
    from toolkit.training.config import TrainConfig

    given = TrainConfig(epochs=2, lr=1e-4)
    model_cfg, train_cfg, data_cfg = configs("train", {"epochs": 3, "adapter": "lora"}, {"train_config": given})
    assert (train_cfg.epochs, train_cfg.lr, model_cfg.adapter) == (3, 1e-4, "lora")  # keywords win, the rest kept
    assert given.epochs == 2  # the caller's object is not changed
    with pytest.raises(ToolkitError, match="train_config: expected a TrainConfig, got SourceOptions"):
        configs("train", {}, {"train_config": SourceOptions()})
    pairs = tmp_path / "p.csv"
    pairs.write_text("a,b,y\nA cat.,A dog.,1\n")
    result = toolkit.check(str(pairs), source_options=SourceOptions(columns=Columns("a", "b", "y")))
    assert result.ok, result.lines()
