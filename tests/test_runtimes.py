"""The engine that serves a bundle: OpenVINO against ONNX Runtime, ``--runtime auto``'s gate, measurement
and memory, and the gate pairs a bundle carries (checked against PyTorch and scipy, not against
the code's own output)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from toolkit.cli import main
from toolkit.common.errors import ToolkitError
from toolkit.scoring.onnx_bundle import Bundle, sha256_file
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.run_dir import load_run

openvino = pytest.importorskip("openvino")

from toolkit.scoring.openvino_engine import OpenVinoEngine, compile_bundle, cpu_precisions  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own: what one test measured is not another's memory."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "runtimes.json"


@pytest.fixture(scope="module")
def dev(small_stsb):
    pairs, _ = read_pairs(small_stsb["dev"], SourceOptions())
    return pairs


def _openvino(bundle: Path, precision: str, hint: str) -> Bundle:
    ort = Bundle.load(bundle, threads=2, runtime="onnxruntime")
    compiled = compile_bundle(bundle / "model.onnx", precision, hint, 2)
    return Bundle(bundle, ort.metadata, OpenVinoEngine(compiled, ort.engine.tokenizer, ort.metadata, precision, hint))


def test_openvino_scores_as_onnxruntime_does(small_models, dev):
    """f32 within float rounding of ONNX Runtime's fp32; the throughput hint's queued batches come back in
    input order (batches of 8: many in flight at once); bf16 within bf16's rounding."""
    bundle = small_models["bundle"]
    ref = Bundle.load(bundle, threads=2, runtime="onnxruntime").predict(dev.s1, dev.s2)
    latency = _openvino(bundle, "f32", "latency")
    queued = _openvino(bundle, "f32", "throughput")
    queued.batch_size = 8
    assert np.max(np.abs(latency.predict(dev.s1, dev.s2) - ref)) < 1e-3
    np.testing.assert_allclose(queued.predict(dev.s1, dev.s2), latency.predict(dev.s1, dev.s2), atol=1e-5)
    assert queued.engine.timing["run"] > 0 and "openvino f32" in queued.engine.describe()
    if "bf16" in cpu_precisions():
        bf16 = _openvino(bundle, "bf16", "throughput").predict(dev.s1, dev.s2)
        assert np.max(np.abs(bf16 - ref)) < 0.25  # 0-5 scale; bf16 keeps 8 bits of mantissa
        assert abs(spearmanr(bf16, dev.scores).statistic - spearmanr(ref, dev.scores).statistic) < 0.02


def test_bundle_carries_its_gate_pairs_with_pytorchs_scores(small_models, small_stsb, dev):
    bundle = small_models["bundle"]
    gate = json.loads((bundle / "gate.json").read_text())
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["files"]["gate.json"] == sha256_file(bundle / "gate.json")
    by_pair = {(a, b): g for a, b, g in zip(dev.s1, dev.s2, dev.scores)}
    assert gate["pairs"] == len(dev) == len(gate["s1"])  # 120 dev pairs: all carried (up to 2000 are)
    assert [by_pair[(a, b)] for a, b in zip(gate["s1"], gate["s2"])] == pytest.approx(gate["gold"])
    pytorch = load_run(small_models["run"], fused_kernel="off").predictor(device="cpu").predict(gate["s1"], gate["s2"])
    np.testing.assert_allclose(gate["reference"], pytorch, atol=1e-4)
    assert gate["limit_spearman_drop"] == 0.3


def test_auto_serves_the_fastest_that_passes_and_remembers_it(small_models, cache):
    bundle = small_models["bundle"]
    said: list[str] = []
    chosen = Bundle.load(bundle, threads=2, runtime="auto", say=said.append)
    assert len(said) == 1 and said[0].startswith("runtime auto: ") and "measured now" in said[0], said
    entries = json.loads(cache.read_text())
    (entry,) = entries.values()
    measured = entry["measured"]
    assert "onnxruntime fp32" in measured and any(k.startswith("openvino") for k in measured)
    passing = {k: v for k, v in measured.items() if not v["note"]}
    assert all(v["spearman_drop"] <= 0.3 for v in passing.values())
    fastest = max(passing, key=lambda k: passing[k]["pairs_per_s"])
    ort = passing.get("onnxruntime fp32")  # serves unless another is 1.2x faster (near-ties would flip)
    switch = ort is None or passing[fastest]["pairs_per_s"] >= 1.2 * ort["pairs_per_s"]
    assert entry["chosen"] == (fastest if switch else "onnxruntime fp32")
    assert ("kept: no other engine is 1.2x faster" in said[0]) == (not switch and fastest != "onnxruntime fp32")
    runtime, precision = entry["chosen"].split()
    assert chosen.engine.runtime == runtime and chosen.describe().startswith(runtime)
    assert said[0].startswith(f"runtime auto: {entry['chosen']} (")

    # the gate, recomputed with scipy from the carried pairs: what serves loses at most the limit
    gate = json.loads((bundle / "gate.json").read_text())
    pred = chosen.predict(gate["s1"], gate["s2"])
    drop = 100 * (spearmanr(gate["reference"], gate["gold"]).statistic - spearmanr(pred, gate["gold"]).statistic)
    assert drop <= 0.3

    again: list[str] = []
    second = Bundle.load(bundle, threads=2, runtime="auto", say=again.append)
    assert "remembered" in again[0] and entry["chosen"] in again[0] and second.describe() == chosen.describe()
    assert json.loads(cache.read_text()) == entries  # nothing measured again
    Bundle.load(bundle, threads=1, runtime="auto", say=again.append)  # other settings: measured for them
    assert "measured now" in again[1] and len(json.loads(cache.read_text())) == 2


def _resigned(bundle: Path, out: Path, edit) -> Path:
    """A copy of ``bundle`` whose gate.json ``edit`` changed and whose metadata records the new file
    (a bundle someone else re-signed): it loads, and what it carries is used as is."""
    shutil.copytree(bundle, out)
    meta = json.loads((out / "metadata.json").read_text())
    gate = json.loads((out / "gate.json").read_text())
    if edit(gate) is None:
        (out / "gate.json").unlink()
        del meta["files"]["gate.json"]
    else:
        (out / "gate.json").write_text(json.dumps(gate))
        meta["files"]["gate.json"] = sha256_file(out / "gate.json")
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def test_auto_without_gate_pairs_or_passing_engine(small_models, tmp_path, cache):
    bundle = small_models["bundle"]
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "gate.json").write_text((bundle / "gate.json").read_text().replace('"gold": [', '"gold": [9.0, '))
    with pytest.raises(ToolkitError, match=r"gate.json: sha256 does not match the bundle's metadata") as e:
        Bundle.load(tampered, runtime="auto")
    assert "\n" not in str(e.value)

    old = _resigned(bundle, tmp_path / "old", lambda gate: None)  # as bundles were before they carried one
    said: list[str] = []
    assert Bundle.load(old, threads=2, runtime="auto", say=said.append).engine.runtime == "onnxruntime"
    assert said == ["runtime auto: onnxruntime fp32 (the bundle carries no gate.json to gate others on: "
                    "export it again)"]

    # a reference no engine reaches (the gold itself): every candidate fails, and the error says by how much
    perfect = _resigned(bundle, tmp_path / "perfect", lambda gate: gate.update(reference=gate["gold"]) or gate)
    with pytest.raises(ToolkitError, match=r"no engine passes the bundle's gate on this machine: onnxruntime fp32: "
                                           r"loses \d+\.\d\d Spearman points .*openvino") as e:
        Bundle.load(perfect, threads=2, runtime="auto")
    assert "\n" not in str(e.value)
    assert not cache.exists() or not json.loads(cache.read_text())  # a failure is not remembered


def test_runtime_is_an_option_of_score_eval_and_predict(small_models, small_stsb, dev, tmp_path, cache, capsys):
    bundle = small_models["bundle"]
    out = tmp_path / "scores.parquet"
    assert main(["score", str(bundle), str(small_stsb["dev"]), "-o", str(out), "--runtime", "openvino",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "on openvino CPU, fp32 bundle at " in err, err  # bf16 where the CPU has it (then measured), else f32
    assert ("runtime openvino: openvino " in err) == ("bf16" in cpu_precisions()), err
    import pyarrow.parquet as pq

    got = pq.read_table(out).column("score").to_numpy()
    ref = Bundle.load(bundle, threads=2, runtime="onnxruntime").predict(dev.s1, dev.s2)
    assert np.max(np.abs(got - ref)) < 0.25
    assert main(["eval", str(bundle), "--data", str(small_stsb["dev"]), "--runtime", "onnxruntime"]) == 0
    assert "onnxruntime CPUExecutionProvider, fp32 bundle" in capsys.readouterr().err
    assert main(["predict", str(bundle), dev.s1[0], dev.s2[0], "--runtime", "auto"]) == 0
    assert "runtime auto: " in capsys.readouterr().err


def test_openvino_refuses_what_it_cannot_serve(small_models, tmp_path):
    """An int8 bundle's quantised operators are ONNX Runtime's: one line, naming the reason."""
    int8 = tmp_path / "int8"
    shutil.copytree(small_models["bundle"], int8)
    meta = json.loads((int8 / "metadata.json").read_text())
    (int8 / "metadata.json").write_text(json.dumps({**meta, "variant": "int8"}))
    with pytest.raises(ToolkitError, match=r"--runtime openvino: OpenVINO serves fp32 bundles \(this one is int8"):
        Bundle.load(int8, runtime="openvino")
    said: list[str] = []
    assert Bundle.load(int8, threads=2, runtime="auto", say=said.append).engine.runtime == "onnxruntime"
    assert said[0].startswith("runtime auto: onnxruntime int8 (OpenVINO serves fp32 bundles")
    with pytest.raises(ToolkitError, match=r"--runtime must be one of auto, onnxruntime, openvino, not 'tvm'"):
        Bundle.load(small_models["bundle"], runtime="tvm")
