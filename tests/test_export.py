"""Merge and ONNX export on small trained runs: the four merge states, bundles for both
architectures and every variant checked against the PyTorch run, the verification gate, the runtime
without torch, and tampered bundles."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.artifacts.merge import load_merged, merge_into_base, merge_run, unmerge_from_base
from toolkit.artifacts.onnx_export import ExportConfig, export_onnx
from toolkit.artifacts.open_model import load_model
from toolkit.common.errors import ToolkitError
from toolkit.model.config import ModelConfig
from toolkit.scoring.onnx_bundle import Bundle
from toolkit.sources import SourceOptions, read_pairs
from toolkit.training.config import TrainConfig
from toolkit.training.loop import train
from toolkit.training.run_data import DataConfig
from toolkit.training.run_dir import load_run

NO_TORCH = Path(__file__).resolve().parent / "no_torch"


def _train(out: Path, small_stsb, arch: str, adapter: str) -> Path:
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=48))
    normalize = "zscore" if arch == "cross" else "auto"
    train(out, data, ModelConfig(arch=arch, adapter=adapter, max_length=48),
          TrainConfig(epochs=1, batch_size=8, lr=5e-3, metric="mse", patience=0, normalize=normalize))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_stsb, small_models) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    made = {name: _train(root / name, small_stsb, *name.split("-")) for name in ("cross-lora", "bi-ia3")}
    return {"bi-seq_bn": small_models["run"], **made}  # the session's bi-encoder (conftest): trained once


@pytest.fixture(scope="module")
def dev(small_stsb):
    pairs, _ = read_pairs(small_stsb["dev"], SourceOptions())
    return pairs


def _inputs(seed: int = 0):
    ids = torch.randint(1000, 20000, (4, 19), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    return ids, mask, torch.zeros_like(ids)


@pytest.mark.parametrize("name", ["cross-lora", "bi-ia3"])
def test_merge_four_states(tmp_path, runs, name):
    """unmerged == merged == unmerged again == saved and reloaded with plain transformers."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    run = load_run(runs[name], fused_kernel="off")
    ids, mask, tt = _inputs()
    out = (lambda m: m(ids, mask, tt)) if run.model.cfg.arch == "cross" else (lambda m: m.embed(ids, mask, tt))
    with torch.no_grad():
        unmerged = out(run.model)
        merge_into_base(run.model.encoder)
        merged = out(run.model)
        unmerge_from_base(run.model.encoder)
        again = out(run.model)
    assert unmerged.abs().max() > 0
    merged_dir = merge_run(runs[name], tmp_path / "merged")
    cls = AutoModelForSequenceClassification if run.model.cfg.arch == "cross" else AutoModel
    plain = cls.from_pretrained(merged_dir / "model", local_files_only=True).eval()  # transformers alone
    with torch.no_grad():
        hidden = plain(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        if run.model.cfg.arch == "cross":
            reloaded = hidden.logits[:, 0]
        else:
            m = mask.unsqueeze(-1).float()
            reloaded = (hidden[0] * m).sum(1) / m.sum(1)
    for state, value in (("merged", merged), ("unmerged again", again), ("saved and reloaded", reloaded)):
        torch.testing.assert_close(value, unmerged, atol=1e-5, rtol=1e-4, msg=lambda m, s=state: f"{s}: {m}")
    # the adapter went into the base weights: some differ from the pre-trained model's
    from toolkit.model.safe_loading import resolve_model

    original = AutoModel.from_pretrained(resolve_model("all-MiniLM-L6-v2")[1], local_files_only=True).state_dict()
    body = getattr(plain, plain.base_model_prefix, plain).state_dict()
    assert any(not torch.equal(v, body[k]) for k, v in original.items() if "pooler" not in k)


def test_merge_refuses_bottleneck_adapters(tmp_path, runs):
    with pytest.raises(ToolkitError, match="seq_bn adapters add layers and cannot be folded"):
        merge_run(runs["bi-seq_bn"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _export(src, out, small_stsb, say=lambda line: None, **kw) -> dict:
    cfg = ExportConfig(verify_data=str(small_stsb["dev"]), threads=2, **kw)
    return export_onnx(src, out, cfg, say=say)


@pytest.fixture(scope="module")
def bundle_dir(small_models) -> Path:
    """The session's fp32 bundle of ``runs["bi-seq_bn"]``, exported as ``_export`` does (shared: copy to change)."""
    return small_models["bundle"]


def test_bi_seq_bn_bundles_match_pytorch(tmp_path, runs, small_stsb, dev, bundle_dir, capfd, caplog):
    reference = load_run(runs["bi-seq_bn"], fused_kernel="off").predictor(device="cpu").predict(dev.s1, dev.s2)
    meta = json.loads((bundle_dir / "metadata.json").read_text())  # the fp32 export of this run
    assert meta["verification"]["max_abs_diff"] <= 1e-4 and meta["arch"] == "bi"
    assert meta["fused_operators"].get("SkipLayerNormalization", 0) >= 12  # ORT's transformer fusions ran
    assert meta["adapter"]["adapter"] == "seq_bn" and meta["labels"]["kind"] == "range"
    bundle = Bundle.load(bundle_dir, threads=2)
    assert np.max(np.abs(bundle.predict(dev.s1, dev.s2) - reference)) <= 1e-4  # all 120 pairs, not the gate's sample

    for variant, kw in (("int8", {"quantize": "int8"}), ("fp16", {"fp16": True})):
        capfd.readouterr()
        caplog.clear()
        lines: list[str] = []
        meta = _export(runs["bi-seq_bn"], tmp_path / variant, small_stsb, say=lines.append, **kw)
        printed = capfd.readouterr()
        assert printed.out + printed.err == "", "the libraries' own chatter reached the console"
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert lines[0].endswith(f"to ONNX ({variant}) ...") and lines[-1].startswith(f"bundle written to {tmp_path}")
        assert f"{tmp_path / variant}: model.onnx " in lines[-1] and " MiB, tokenizer.json " in lines[-1]
        assert any(line.startswith("verified on CPUExecutionProvider, 120 pairs of dev.csv: Spearman ")
                   for line in lines), lines
        assert len(lines) <= 5
        figures = meta["verification"]
        assert figures["variant"] == variant and figures["spearman_drop"] <= 0.3
        ops = _ops(tmp_path / variant)
        if variant == "int8":  # every weight MatMul integer: 6 per layer + the adapter's 2; QK^T and AV float
            assert (ops["MatMulInteger"], ops["MatMul"]) == (8 * LAYERS, 2 * LAYERS)
        pred = Bundle.load(tmp_path / variant, threads=2).predict(dev.s1, dev.s2)
        assert 0 < np.max(np.abs(pred - reference)) < 0.5  # a different model, but close
    size = {v: (tmp_path / v / "model.onnx").stat().st_size for v in ("fp16", "int8")}
    size["fp32"] = (bundle_dir / "model.onnx").stat().st_size
    assert size["int8"] < size["fp32"] and size["fp16"] < 0.6 * size["fp32"]


@pytest.fixture(scope="module")
def cross_exports(tmp_path_factory, runs, small_stsb) -> dict[str, Path]:
    """The cross-encoder LoRA run merged, and exported from the run and from the merged folder."""
    root = tmp_path_factory.mktemp("cross_exports")
    merged = merge_run(runs["cross-lora"], root / "merged")
    out = {"merged": merged}
    for src in (runs["cross-lora"], merged):
        out[f"bundle-{src.name}"] = root / f"bundle-{src.name}"
        out[f"meta-{src.name}"] = _export(src, out[f"bundle-{src.name}"], small_stsb)
    return out


def test_cross_encoder_exports_from_run_and_from_merged_dir(tmp_path, runs, small_stsb, dev, cross_exports):
    run = load_run(runs["cross-lora"], fused_kernel="off")
    reference = run.predictor(device="cpu").predict(dev.s1, dev.s2)
    merged = cross_exports["merged"]
    for src in (runs["cross-lora"], merged):
        out = cross_exports[f"bundle-{src.name}"]
        meta = cross_exports[f"meta-{src.name}"]
        assert meta["arch"] == "cross" and meta["output_kind"] == "normalized_score"
        pred = Bundle.load(out, threads=2).predict(dev.s1, dev.s2)
        assert np.max(np.abs(pred - reference)) <= 1e-4
    merged_meta = json.loads((cross_exports["bundle-merged"] / "metadata.json").read_text())
    assert merged_meta["merged_from"]["adapter"] == "lora"
    config, _, _ = load_merged(merged)
    assert config["kind"] == "merged"


def _ops(bundle: Path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(bundle / "model.onnx")).graph.node)


LAYERS = 6  # MiniLM-L6


def test_chosen_graphs_are_pinned_node_for_node(tmp_path, runs, small_stsb, dev, cross_exports, bundle_dir):
    """The graph each precision and architecture gets by default (chosen by measurement, RESULTS.md),
    pinned: an exporter or ONNX Runtime upgrade that changes it fails here, not silently in throughput."""
    plain_fp32 = {"exporter": "dynamo", "attention": "plain", "quantized_ops": [], "fp32_matmuls": 0}
    # cross-encoder fp32, merged LoRA and unmerged (the adapters library's model): plain ops
    for name in ("merged", "cross-lora"):
        assert cross_exports[f"meta-{name}"]["graph"] == plain_fp32
    ops = _ops(cross_exports["bundle-merged"])
    assert (ops["Attention"], ops["Softmax"], ops["SkipLayerNormalization"], ops["BiasGelu"]) == (0, LAYERS, 12, 6)
    # cross-encoder int8: TorchScript export + ORT's fusion, one Attention per layer, quantised (QAttention)
    meta = _export(cross_exports["merged"], tmp_path / "int8", small_stsb, quantize="int8")
    # (where the gate refused it at first, the FFN output projections stay fp32: MatMul, one per layer)
    kept = meta["graph"].pop("fp32_matmuls")
    assert meta["graph"] == {"exporter": "torchscript", "attention": "fused", "quantized_ops": ["MatMul", "Attention"]}
    assert kept in (0, LAYERS)
    ops = _ops(tmp_path / "int8")
    assert (ops["QAttention"], ops["Attention"], ops["MatMul"], ops["Softmax"]) == (LAYERS, 0, kept, 0)
    assert ops["MatMulInteger"] == 3 * LAYERS + 2 - kept  # output projection and FFN per layer; pooler, head
    assert ops["EmbedLayerNormalization"] == 1
    reference = load_model(str(cross_exports["merged"])).predictor(device="cpu").predict(dev.s1, dev.s2)
    assert np.max(np.abs(Bundle.load(tmp_path / "int8", threads=2).predict(dev.s1, dev.s2) - reference)) < 0.5
    # bi-encoder with a bottleneck adapter (in the graph): plain ops
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert meta["graph"] == plain_fp32
    ops = _ops(bundle_dir)
    assert (ops["Attention"], ops["MultiHeadAttention"], ops["Softmax"]) == (0, 0, LAYERS)
    assert ops["MatMul"] == 8 * LAYERS + 2 * LAYERS  # Q, K, V, QK^T, AV, output, FFN in and out; the adapter's two
    # asked to fuse where the fusion does not match (the adapter's attention): plain ops, said in one line
    lines: list[str] = []
    meta = _export(runs["bi-seq_bn"], tmp_path / "bi-fused", small_stsb, attention="fused", say=lines.append)
    assert meta["graph"]["attention"] == "plain" and _ops(tmp_path / "bi-fused") == ops
    assert any(line.startswith("fused attention: ONNX Runtime fused 0 of 6 layers' attention") for line in lines)


def test_a_model_exported_again_reuses_its_graph_and_a_changed_model_gets_its_own(tmp_path, runs, small_stsb,
                                                                                    bundle_dir, monkeypatch):
    """A later export of the same weights does not run torch's exporter (the graph is kept in the cache
    folder, this test session's, where the export of ``bundle_dir`` put it, maybe in another worker; by
    another process: the base-install main job's int8 export), and gives the same bytes; a graph kept
    for other weights is never used: with one adapter weight changed, the exporter must run."""
    from safetensors.numpy import load_file, save_file

    def no_exporter(*args, **kwargs):
        raise AssertionError("torch.onnx.export ran")

    monkeypatch.setattr(torch.onnx, "export", no_exporter)
    lines: list[str] = []
    _export(runs["bi-seq_bn"], tmp_path / "again", small_stsb, say=lines.append)
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (bundle_dir / "model.onnx").read_bytes()
    cache = Path(os.environ["TOOLKIT_CACHE_DIR"]) / "onnx-graphs"
    assert any(line.startswith("optimised: fused ") and line.endswith(
        f"(torch's export of this model reused from {cache})") for line in lines)
    changed = tmp_path / "changed"
    shutil.copytree(runs["bi-seq_bn"], changed)
    weights = changed / "adapter" / "adapter.safetensors"
    tensors = load_file(weights)
    up = next(k for k in sorted(tensors) if "adapter_up" in k and k.endswith("weight"))
    tensors[up] = tensors[up] + np.random.default_rng(0).normal(0, 0.05, tensors[up].shape).astype(np.float32)
    save_file(tensors, weights)
    with pytest.raises(AssertionError, match="torch.onnx.export ran"):
        _export(changed, tmp_path / "changed-bundle", small_stsb)


def test_graph_cache_distrusts_damage_keeps_the_newest_within_budget_and_never_fails_an_export(tmp_path,
                                                                                                monkeypatch):
    """The cache's own rules, with a stand-in for torch's exporter (which writes a graph and names its
    inputs): a damaged entry is exported again; past the budget the entries used last stay; a cache
    folder that cannot be written leaves the export as it would be without it."""
    from toolkit.artifacts import graph_cache

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []

    def export_as(key: str, size: int):
        def export() -> list[str]:
            calls.append(key)
            (tmp_path / "work" / "raw.onnx").write_bytes(key.encode() * size)
            return ["input_ids", "attention_mask"]
        return export

    (tmp_path / "work").mkdir()
    raw = tmp_path / "work" / "raw.onnx"
    assert graph_cache.exported("a", raw, export_as("a", 100)) == (["input_ids", "attention_mask"], False)
    assert graph_cache.exported("a", raw, export_as("a", 100)) == (["input_ids", "attention_mask"], True)
    assert calls == ["a"] and raw.read_bytes() == b"a" * 100
    entry = graph_cache.graphs_dir() / "a.onnx"
    entry.write_bytes(b"a" * 99 + b"b")  # damaged (or half replaced): its sha256 no longer matches
    assert graph_cache.exported("a", raw, export_as("a", 100))[1] is False and calls == ["a", "a"]
    assert graph_cache.exported("a", raw, export_as("a", 100))[1] is True  # kept again, whole

    monkeypatch.setattr(graph_cache, "BUDGET", 250)
    for key in ("b", "c"):
        graph_cache.exported(key, raw, export_as(key, 100))
    assert sorted(p.name for p in graph_cache.graphs_dir().glob("*.onnx")) == ["b.onnx", "c.onnx"]  # a: oldest
    graph_cache.exported("b", raw, export_as("b", 100))  # used: now newer than c
    graph_cache.exported("d", raw, export_as("d", 100))
    assert sorted(p.name for p in graph_cache.graphs_dir().glob("*.onnx")) == ["b.onnx", "d.onnx"]

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(blocked))
    assert graph_cache.exported("e", raw, export_as("e", 10)) == (["input_ids", "attention_mask"], False)
    assert graph_cache.exported("e", raw, export_as("e", 10))[1] is False and raw.read_bytes() == b"e" * 10


def test_gate_refuses_a_drifting_export(tmp_path, runs, small_stsb):
    with pytest.raises(ToolkitError, match=r"export refused: ONNX Runtime differs from PyTorch .* \(limit 1e-12\)"):
        _export(runs["bi-seq_bn"], tmp_path / "b", small_stsb, max_abs_diff=1e-12)
    lines: list[str] = []
    with pytest.raises(ToolkitError, match=r"export refused: int8 loses .* Spearman points"):
        _export(runs["bi-seq_bn"], tmp_path / "c", small_stsb, say=lines.append, quantize="int8",
                max_spearman_drop=-100.0)
    # a refused int8 export is tried once more with each layer's FFN output projection (1536 -> 384) in fp32
    (retry,) = [line for line in lines if "quantising again" in line]
    assert retry.startswith("export refused: int8 loses") and retry.endswith("FFN output projection in fp32")
    assert any("but for 6 FFN output projections (fp32)" in line for line in lines), lines
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # nothing half-written


def _cli(*args: str, no_torch: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if no_torch:
        env["PYTHONPATH"] = str(NO_TORCH)
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_bundle_runs_without_torch(tmp_path, bundle_dir, runs, small_stsb):
    probe = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, "PYTHONPATH": str(NO_TORCH)},
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    proc = _cli("eval", str(bundle_dir), "--data", str(small_stsb["dev"]), "--json", str(tmp_path / "m.json"),
                "--runtime", "onnxruntime", no_torch=True)  # fp32 as exported (auto may serve bf16)
    assert proc.returncode == 0, proc.stderr[-2000:]
    onnx_metrics = json.loads((tmp_path / "m.json").read_text())
    proc = _cli("eval", str(runs["bi-seq_bn"]), "--data", str(small_stsb["dev"]), "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_metrics = json.loads((tmp_path / "t.json").read_text())
    for key in ("spearman", "pearson", "mse"):
        assert onnx_metrics[key] == pytest.approx(torch_metrics[key], abs=1e-5)
    proc = _cli("predict", str(bundle_dir), "A plane is taking off.", "An air plane is taking off.", no_torch=True)
    assert proc.returncode == 0 and 0 <= float(proc.stdout) <= 5.5


@pytest.mark.parametrize("damage,message", [
    ("flip a byte of model.onnx", "model.onnx: sha256 does not match the bundle's metadata"),
    ("delete tokenizer.json", "bundle file tokenizer.json is missing"),
    ("rename an input", "are not the bundle's"),
    ("not json", "metadata.json: unreadable metadata"),
])
def test_tampered_bundles_are_refused_in_one_line(tmp_path, bundle_dir, damage, message):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    meta_path = bad / "metadata.json"
    if damage.startswith("flip"):
        data = bytearray((bad / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / "model.onnx").write_bytes(bytes(data))
    elif damage.startswith("delete"):
        (bad / "tokenizer.json").unlink()
    elif damage.startswith("rename"):
        meta = json.loads(meta_path.read_text())
        meta["inputs"] = ["input_ids", "attention_mask", "segment_ids"]
        meta_path.write_text(json.dumps(meta))
    else:
        meta_path.write_text("{ not json")
    proc = _cli("predict", str(bad), "a", "b", no_torch=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def _portable(obj, forbidden: list[str]) -> list[str]:
    """Strings in a bundle's metadata that name a place on the machine that built it."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _portable(v, forbidden)]
    if isinstance(obj, list):
        return [s for v in obj for s in _portable(v, forbidden)]
    return [obj] if isinstance(obj, str) and (obj.startswith("/") or any(f in obj for f in forbidden)) else []


def test_every_command_takes_a_run_a_merged_folder_and_a_bundle(tmp_path, runs, small_stsb, cross_exports, capsys):
    """eval, predict and score on each kind give the run's scores; export takes a run or a merged
    folder (cross_exports) and refuses a bundle in one line; its bundles carry no path of this machine."""
    import pyarrow.parquet as pq

    from toolkit.cli import main

    run = runs["cross-lora"]
    kinds = {"run": run, "merged": cross_exports["merged"], "bundle": cross_exports["bundle-merged"]}
    dev_pairs, _ = read_pairs(small_stsb["dev"], SourceOptions())
    want = load_run(run).predictor(device="cpu").predict(dev_pairs.s1, dev_pairs.s2)
    capsys.readouterr()
    for kind, path in kinds.items():
        json_path = tmp_path / f"{kind}.json"
        exact = ["--runtime", "onnxruntime"]  # fp32 as exported (auto may serve bf16: test_runtimes.py)
        assert main(["eval", str(path), "--data", str(small_stsb["dev"]), "--json", str(json_path), *exact]) == 0
        metrics = json.loads(json_path.read_text())
        assert metrics["n"] == len(want)
        assert main(["predict", str(path), dev_pairs.s1[3], dev_pairs.s2[3], *exact]) == 0
        out = capsys.readouterr()
        assert float(out.out.strip().splitlines()[-1]) == pytest.approx(want[3], abs=1e-3)
        if kind == "bundle":  # the provider serving a bundle is said
            assert "on onnxruntime CPUExecutionProvider, fp32 bundle" in out.err
        assert main(["score", str(path), str(small_stsb["dev"]), "-o", str(tmp_path / f"{kind}.parquet"),
                     "--quiet", *exact]) == 0
        scores = pq.read_table(tmp_path / f"{kind}.parquet").column("score").to_numpy()
        np.testing.assert_allclose(scores, want, atol=1e-4)
    for name in ("bundle-cross-lora", "bundle-merged"):
        metadata = json.loads((cross_exports[name] / "metadata.json").read_text())
        assert metadata["verification"]["provider"] == "CPUExecutionProvider"
        assert _portable(metadata, [str(cross_exports[name].parent), str(runs["cross-lora"].parent), os.getcwd(),
                                    str(Path.home())]) == []
    capsys.readouterr()
    assert main(["export", str(kinds["bundle"]), "--onnx", "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{kinds['bundle']}: is already an ONNX bundle; export takes a run directory or a merged folder"


def test_providers_are_chosen_explicitly():
    """int8 on the CPU provider even where CUDA is there; fp32/fp16 on CUDA where onnxruntime has it;
    an explicit choice that cannot be honoured is refused in one line."""
    from toolkit.scoring.onnx_bundle import CPU, CUDA, choose_providers

    assert choose_providers("int8", "auto", [CUDA, CPU]) == [CPU]
    assert choose_providers("fp16", "auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("fp32", "auto", [CPU]) == [CPU]
    assert choose_providers("fp32", "cpu", [CUDA, CPU]) == [CPU]
    with pytest.raises(ToolkitError, match="int8 bundles are for CPUs"):
        choose_providers("int8", "cuda", [CUDA, CPU])
    with pytest.raises(ToolkitError, match="no CUDA provider"):
        choose_providers("fp32", "cuda", [CPU])


def test_sentence_transformers_folders_load_with_the_toolkits_outputs(tmp_path, runs, cross_exports, dev, capsys):
    """sentence-transformers 5.x (the last line that runs beside transformers 4.57.6, which adapters
    1.3.0 pins) loads both kinds of folder: equal embeddings and scores."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from toolkit.artifacts.st_export import export_sentence_transformers
    from toolkit.cli import main

    bi = load_run(runs["bi-ia3"], fused_kernel="off").predictor(device="cpu")
    st_dir = export_sentence_transformers(runs["bi-ia3"], tmp_path / "st-bi", say=lambda line: None)
    st = SentenceTransformer(str(st_dir), device="cpu")
    texts = list(dict.fromkeys([*dev.s1, *dev.s2]))
    np.testing.assert_allclose(st.encode(texts, batch_size=16), bi.embed(texts), atol=1e-5)
    labels = json.loads((st_dir / "toolkit.json").read_text())["labels"]
    cosine = st.similarity_pairwise(st.encode(dev.s1), st.encode(dev.s2)).numpy()
    np.testing.assert_allclose(labels["offset"] + labels["scale"] * cosine, bi.predict(dev.s1, dev.s2), atol=1e-4)

    want = load_run(runs["cross-lora"], fused_kernel="off").predictor(device="cpu").predict(dev.s1, dev.s2)
    for src in (runs["cross-lora"], cross_exports["merged"]):  # a run, and a merged folder through the CLI
        out = tmp_path / f"st-{src.name}"
        if src == runs["cross-lora"]:
            export_sentence_transformers(src, out, say=lambda line: None)
        else:
            assert main(["export", str(src), "--sentence-transformers", "--out", str(out)]) == 0
            assert f"load it with CrossEncoder('{out}')" in capsys.readouterr().err
        got = CrossEncoder(str(out), device="cpu").predict(list(zip(dev.s1, dev.s2)), batch_size=16)
        np.testing.assert_allclose(got, want, atol=1e-4)  # on the user's scale: the label scale is folded in

    with pytest.raises(ToolkitError, match="seq_bn adapters add layers and cannot be folded"):
        export_sentence_transformers(runs["bi-seq_bn"], tmp_path / "no")
    assert not (tmp_path / "no").exists()
    assert main(["export", str(runs["bi-ia3"]), "--onnx", "--sentence-transformers", "--out", str(tmp_path / "x")]) == 2


def test_bce_cross_encoder_keeps_its_sigmoid_in_every_form(tmp_path, small_stsb, dev):
    """A cross-encoder trained with --loss bce ends in a sigmoid: its scores lie inside the declared
    range, and its merged folder, ONNX bundle and sentence-transformers folder (CrossEncoder with
    a Sigmoid, on 0..1, mapped back by toolkit.json's scale) give the run's scores."""
    from sentence_transformers import CrossEncoder

    from toolkit.artifacts.merge import load_merged_run
    from toolkit.artifacts.st_export import export_sentence_transformers

    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=48))
    run_dir = tmp_path / "bce"
    train(run_dir, data, ModelConfig(arch="cross", adapter="lora", max_length=48),
          TrainConfig(epochs=1, batch_size=8, lr=5e-3, loss="bce", patience=0))
    assert json.loads((run_dir / "config.json").read_text())["model"]["head_activation"] == "sigmoid"
    run = load_run(run_dir, fused_kernel="off")
    want = run.predictor(device="cpu").predict(dev.s1, dev.s2)
    batch = run.tokens.tokenizer(dev.s1[:8], dev.s2[:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = run.model(**batch, output="logit").double().numpy()
    np.testing.assert_allclose(want[:8], 5 / (1 + np.exp(-logits)), atol=1e-5)  # range 0..5, by hand
    assert 0 < want.min() and want.max() < 5

    merged = merge_run(run_dir, tmp_path / "merged")
    np.testing.assert_allclose(load_merged_run(merged).predictor(device="cpu").predict(dev.s1, dev.s2), want,
                               atol=1e-5)
    _export(run_dir, tmp_path / "bundle", small_stsb)
    np.testing.assert_allclose(Bundle.load(tmp_path / "bundle", threads=2).predict(dev.s1, dev.s2), want, atol=1e-4)
    st_dir = export_sentence_transformers(merged, tmp_path / "st", say=lambda line: None)
    info = json.loads((st_dir / "toolkit.json").read_text())
    assert info["score"] == "offset + scale * CrossEncoder.predict"
    got = CrossEncoder(str(st_dir), device="cpu").predict(list(zip(dev.s1, dev.s2)), batch_size=16)
    assert 0 < got.min() and got.max() < 1
    np.testing.assert_allclose(info["labels"]["offset"] + info["labels"]["scale"] * got, want, atol=1e-4)


def test_mean_pooled_cross_encoder_exports_to_onnx_and_refuses_to_merge(tmp_path, small_stsb, dev):
    """BERT's sequence classifier reads [CLS]: a mean-pooled head goes to ONNX from the run, not through
    a merged transformers folder."""
    data = DataConfig(str(small_stsb["train"]), str(small_stsb["dev"]), SourceOptions(limit=48))
    run_dir = tmp_path / "mean"
    train(run_dir, data, ModelConfig(arch="cross", adapter="lora", max_length=48, pooling="mean"),
          TrainConfig(epochs=1, batch_size=8, lr=5e-3, patience=0, normalize="zscore"))
    want = load_run(run_dir, fused_kernel="off").predictor(device="cpu").predict(dev.s1, dev.s2)
    _export(run_dir, tmp_path / "bundle", small_stsb)
    np.testing.assert_allclose(Bundle.load(tmp_path / "bundle", threads=2).predict(dev.s1, dev.s2), want, atol=1e-4)
    with pytest.raises(ToolkitError, match="on the mean of the token states.*no transformers equivalent"):
        merge_run(run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
