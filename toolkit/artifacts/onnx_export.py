"""``toolkit export --onnx``: a run (any adapter) or a merged directory to a verified ONNX bundle.

Steps: the scoring graph is exported with torch's exporter: for fused attention (the default where it
was measured faster: int8 cross-encoders) by its TorchScript exporter, whose BERT graph ONNX Runtime's
optimiser fuses into one Attention operator per layer; otherwise by its dynamo exporter (plain
MatMul/Softmax attention). Both match PyTorch to ~1e-6 with the graph module in eval mode (an
earlier note here said the TorchScript exporter gave wrong outputs; a merged model was then exported
with its dropout live).
ONNX Runtime's transformer optimiser also fuses LayerNorm + residual (SkipLayerNormalization) and
bias + GELU; then the variant: fp32, fp16 (weights and activations; for GPUs) or int8 (dynamic
quantisation of the MatMuls and the fused attention's projections; for CPUs). Bottleneck adapters are
ordinary MatMul/activation/Add nodes in the graph.
Before the bundle is written, a gate compares it with PyTorch: fp32 on a sample of pairs (largest
absolute difference on the score scale), fp16/int8 on the whole dev file (Spearman change).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional, Sequence

import torch
from torch import nn

from toolkit import __version__
from toolkit.artifacts.export_gate import GateRefused, gate, gate_pairs, verdict, verify_pairs
from toolkit.artifacts.graph_cache import exported, graph_key, graphs_dir
from toolkit.artifacts.merge import is_merged, load_merged_run
from toolkit.common.atomic_io import atomic_dir, read_json, refuse_existing, write_json
from toolkit.common.choices import Attention, Provider
from toolkit.common.errors import ToolkitError, first_line
from toolkit.common.option_types import Bounds, Count, check_options
from toolkit.model.architectures import architecture
from toolkit.model.label_scale import LabelScale
from toolkit.scoring.onnx_bundle import FORMAT, METADATA, MODEL, TOKENIZER, Bundle, sha256_file
from toolkit.scoring.runtimes import GATE
from toolkit.training.run_data import trained_columns
from toolkit.training.run_dir import CONFIG, METRICS, load_run


@dataclass
class ExportConfig:
    """The ONNX bundle: precision, and the gate it must pass before it is written."""

    fp16: bool = False  # fp16 weights and activations (for GPUs)
    quantize: Optional[Literal["int8"]] = None  # int8 dynamic quantisation (for CPUs)
    opset: int = 18  # ONNX opset
    verify_data: Optional[str] = None
    """pair file for the verification gate, read with the run's columns (default: the run's dev pairs)"""
    verify_pairs: Annotated[int, Bounds(8)] = 256  # pairs compared with PyTorch for fp32
    max_abs_diff: float = 1e-4  # fp32 gate: largest score difference from PyTorch allowed
    max_spearman_drop: float = 0.3  # fp16/int8 gate: Spearman points lost on the dev file allowed
    threads: Optional[Count] = None  # ONNX Runtime threads for the verification
    attention: Attention = "auto"
    """fused: one com.microsoft Attention operator per layer (TorchScript exporter + ONNX Runtime's fusion;
    plain ops where the model does not fuse); plain: MatMul/Softmax ops (dynamo exporter); auto: whichever
    was measured faster for this precision and architecture (DEFAULT_ATTENTION)"""
    provider: Provider = "auto"
    """the verification gate runs on the provider that will serve the bundle: auto = CPU for int8, CUDA for
    fp32/fp16 where onnxruntime has it"""

    @property
    def variant(self) -> str:
        return "int8" if self.quantize == "int8" else "fp16" if self.fp16 else "fp32"

    def attention_for(self, arch: str) -> str:
        return DEFAULT_ATTENTION[(self.variant, arch)] if self.attention == "auto" else self.attention

    def validate(self) -> None:
        check_options(self)
        if self.fp16 and self.quantize:
            raise ToolkitError("choose one of --fp16 and --quantize int8")


INT8_OPS = ("MatMul", "Attention")  # what int8 quantises: every weight MatMul, fused attention's projections too

# The graph each precision and architecture gets by default, chosen by measurement (benchmarks/bench_score.py,
# RESULTS.md "CPU scoring at the limit", 2-core AVX2): fused attention where it was faster at parity (cross
# int8: faster, and the plain int8 graph lost more Spearman than the gate allows), plain ops elsewhere (cross
# fp32: plain 2-4% faster end to end; bi: the fusion does not match a bottleneck adapter's attention). fp16
# (GPUs) keeps plain ops until a GPU has measured the fused one.
DEFAULT_ATTENTION: dict[tuple[str, str], str] = {
    ("fp32", "cross"): "plain", ("fp32", "bi"): "plain",
    ("int8", "cross"): "fused", ("int8", "bi"): "plain",
    ("fp16", "cross"): "plain", ("fp16", "bi"): "plain",
}


class GraphModule(nn.Module):
    """What goes into the graph: token ids to pooled embeddings (bi) or the normalised score (cross).
    ``model``: a ``PairRegressor`` or a merged directory's ``MergedRegressor`` (the same calls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        fn = self.model if architecture(self.model.cfg.arch).joint else self.model.embed
        return fn(input_ids, attention_mask, token_type_ids).float()


@dataclass
class Source:
    """A run or a merged directory, opened for export."""

    folder: Path
    config: dict
    graph: GraphModule
    tokenizer: object  # transformers fast tokenizer
    labels: LabelScale
    torch_predict: object  # (s1, s2) -> scores on the user's scale, in PyTorch
    hf_config: object  # the encoder's transformers config (heads, width for the optimiser)

    @property
    def arch(self) -> str:
        return self.config["model"]["arch"]


def open_source(folder: str | Path) -> Source:
    folder = Path(folder)
    if (folder / METADATA).is_file():
        raise ToolkitError(f"{folder}: is already an ONNX bundle; export takes a run directory or a merged folder")
    if not (folder / CONFIG).is_file():
        raise ToolkitError(f"{folder}: neither a run directory nor a merged model (no {CONFIG})")
    if is_merged(folder):
        merged = load_merged_run(folder)
        return Source(folder, merged.config, GraphModule(merged.model).eval(), merged.tokens.tokenizer, merged.labels,
                      merged.predictor(batch_size=64, device="cpu").predict, merged.model.plain.config)
    run = load_run(folder, fused_kernel="off")  # the graph holds plain ops, never a Triton kernel
    model = run.model.eval()
    config = dict(run.config)
    if (folder / METRICS).is_file():
        config.setdefault("metrics", {"dev": read_json(folder / METRICS).get("dev")})
    return Source(folder, config, GraphModule(model).eval(), run.tokens.tokenizer, run.labels,
                  run.predictor(batch_size=64, device="cpu").predict, model.encoder.config)


def export_graph(source: Source, path: Path, opset: int, exporter: str) -> list[str]:
    """The scoring graph as ONNX, by torch's dynamo exporter or its TorchScript exporter: ONNX Runtime's
    optimiser fuses attention (com.microsoft Attention, which int8 quantises to QAttention) in the
    TorchScript exporter's graphs of BERT, not in the dynamo exporter's. Both match PyTorch to ~1e-6."""
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in source.tokenizer.model_input_names]
    example = source.tokenizer(["a short sentence", "and a somewhat longer one, to pad"], ["x", "y"] if
                               architecture(source.arch).joint else None, padding=True, return_tensors="pt")
    args = tuple(example[n] for n in names)
    # the exporter narrates each step on stdout and warns about torchvision ops it skips, and the
    # TorchScript one that it is deprecated: keep the console for ours (the verification gate, not
    # their warnings, says whether the graph is right)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(source.graph, args, str(path), input_names=names, output_names=["output"],
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names}, opset_version=opset,
                              dynamo=False)
            return names
        from torch.export import Dim

        batch, seq = Dim("batch", min=1, max=65536), Dim("sequence", min=2, max=source.config["model"]["max_length"])
        program = torch.onnx.export(source.graph, args, input_names=names, output_names=["output"],
                                    dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), opset_version=opset,
                                    dynamo=True, verbose=False)
        program.save(str(path))
    return names


@dataclass
class Graph:
    """The optimised fp32 graph (an ORT ``OnnxModel``), how it was built, and what was fused."""

    model: object
    inputs: list[str]
    attention: str  # "fused" or "plain"
    exporter: str
    fused: dict[str, int]
    reused: bool = False  # torch's export kept from an earlier export of the same model (graph_cache)


def build_graph(source: Source, work: Path, cfg: ExportConfig, say=print) -> Graph:
    """Export and fuse. Fused attention is asked of the TorchScript exporter + ORT's BERT fusion; where
    the fusion does not match the model (a bottleneck adapter's attention, as the adapters library
    writes it) or that exporter fails (it is deprecated), the plain dynamo graph is used instead."""
    from onnxruntime.transformers.optimizer import optimize_model

    hf = source.hf_config
    attention = cfg.attention_for(source.arch)
    for exporter in (("torchscript", "dynamo") if attention == "fused" else ("dynamo",)):
        raw = work / f"{exporter}.onnx"
        settings = {"exporter": exporter, "opset": cfg.opset, "torch": torch.__version__,
                    "model": source.config.get("model")}
        try:
            inputs, reused = exported(graph_key(source.graph, settings), raw,
                                      lambda: export_graph(source, raw, cfg.opset, exporter))
        except Exception as e:  # torch raises many types; the dynamo exporter below is the fallback
            if exporter == "dynamo":
                raise
            say(f"fused attention: the TorchScript exporter failed ({first_line(e)}); exporting plain ops")
            continue
        optimized = optimize_model(str(raw), model_type="bert", num_heads=hf.num_attention_heads,
                                   hidden_size=hf.hidden_size, opt_level=1)
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        if exporter == "dynamo":
            return Graph(optimized, inputs, "plain", exporter, fused, reused)
        if fused.get("Attention", 0) == hf.num_hidden_layers:
            return Graph(optimized, inputs, "fused", exporter, fused, reused)
        say(f"fused attention: ONNX Runtime fused {fused.get('Attention', 0)} of {hf.num_hidden_layers} layers' "
            "attention in this model; exporting plain ops")
    raise AssertionError("unreachable: the dynamo export returns or raises")


@contextlib.contextmanager
def quantizer_warnings() -> Iterator[list[str]]:
    """Collects what ONNX Runtime's quantiser logs through the root logger instead of printing it:
    a warning per tensor behind the fused com.microsoft operators, whose type it cannot infer (they
    stay float, as ``DefaultTensorType`` asks), and advice to pre-process (shape inference the fused
    graph does not need). The caller summarises them in one line."""
    seen: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if "onnxruntime" in record.pathname and record.levelno < logging.ERROR:
            seen.append(record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield seen
    finally:
        root.removeFilter(keep)


def ffn_output_matmuls(graph: Graph, hf_config) -> list[str]:
    """Each layer's FFN output projection (intermediate -> hidden): the MatMul whose input, GELU's output, per-tensor
    dynamic activation quantisation handles worst (it lost 0.36 of 0.36 Spearman points on an AMX Xeon's int8;
    benchmarks/bench_int8.py)."""
    weights = {i.name: tuple(i.dims) for i in graph.model.model.graph.initializer}
    shape = (hf_config.intermediate_size, hf_config.hidden_size)
    return [n.name for n in graph.model.model.graph.node if n.op_type == "MatMul" and len(n.input) > 1
            and weights.get(n.input[1]) == shape]


def _write_variant(graph: Graph, out: Path, cfg: ExportConfig, say=print, keep_fp32: Sequence[str] = ()) -> None:
    """The optimised graph as the bundle's precision: fp32 as is, fp16 converted, int8 quantised (but for
    the MatMuls named in ``keep_fp32``)."""
    optimized = graph.model
    if cfg.variant == "fp16":
        optimized.convert_float_to_float16(keep_io_types=True)
    if cfg.variant != "int8":
        optimized.save_model_to_file(str(out))
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = out.with_name("fp32.onnx")
    # the optimiser leaves shape annotations that ONNX's shape inference (run by the quantiser)
    # contradicts on cross-encoder heads; inference recomputes them
    optimized.model.graph.ClearField("value_info")
    optimized.save_model_to_file(str(fp32))
    with quantizer_warnings() as notes:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=list(INT8_OPS), nodes_to_exclude=list(keep_fp32),
                         extra_options={"DefaultTensorType": 1})  # float: types behind the fused ops
    fp32.unlink()
    untyped = sum(m.startswith("Failed to infer data type") for m in notes)
    what = "MatMul and Attention" if graph.attention == "fused" else "MatMul"
    say(f"quantised to int8: {what} weights per channel, activations dynamically"
        + (f", but for {len(keep_fp32)} FFN output projections (fp32)" if keep_fp32 else "")
        + (f"; {untyped} tensors behind the fused operators stay float (no type to infer; expected)"
           if untyped else ""))


def export_onnx(source_dir: str | Path, out: str | Path, cfg: ExportConfig, overwrite: bool = False,
                say=print) -> dict:
    """Export, optimise, convert, verify; write the bundle atomically. Returns its metadata."""
    cfg.validate()
    out = Path(out)
    refuse_existing(out, overwrite)
    source = open_source(source_dir)
    verify_path, pairs = verify_pairs(source, cfg)  # before the export: a missing file fails at once
    start = time.time()
    reference: dict[int, float] = {}  # PyTorch's scores of the gate's pairs, by index
    with tempfile.TemporaryDirectory(prefix="toolkit-export-") as work, atomic_dir(out) as tmp:
        say(f"exporting {source.folder} ({source.arch}, adapter {source.config['model']['adapter']}) to ONNX "
            f"({cfg.variant}) ...")
        graph = build_graph(source, Path(work), cfg, say)
        _write_variant(graph, tmp / MODEL, cfg, say)
        say("optimised: fused " + ", ".join(f"{k} {v}" for k, v in sorted(graph.fused.items()))
            + (f" (torch's export of this model reused from {graphs_dir()})" if graph.reused else ""))
        source.tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER))
        metadata = _metadata(source, cfg, graph, tmp)

        def verify() -> dict:  # on ONNX Runtime: the engine every machine has (others are gated where they serve)
            bundle = Bundle.load(tmp, threads=cfg.threads, provider=cfg.provider)
            return {**gate(source, bundle, cfg, verify_path, pairs, reference), "provider": bundle.provider}

        try:
            figures = verify()
        except GateRefused as refused:
            keep = ffn_output_matmuls(graph, source.hf_config) if cfg.variant == "int8" else []
            if not keep:
                raise
            # where int8 lost more than the limit (LoRA cross-encoders on AVX2 and AMX CPUs), most of the loss
            # was there: retry without it, at some speed
            say(f"{refused}; quantising again with each layer's FFN output projection in fp32")
            _write_variant(graph, tmp / MODEL, cfg, say, keep_fp32=keep)
            metadata = _metadata(source, cfg, graph, tmp, keep)
            figures = verify()
        write_json(tmp / GATE, gate_pairs(source, cfg, verify_path, pairs, reference))
        metadata["files"][GATE] = sha256_file(tmp / GATE)
        metadata["verification"] = figures
        write_json(tmp / METADATA, metadata)
        say(verdict(metadata["verification"]))
    sizes = ", ".join(f"{name} {(out / name).stat().st_size / 2 ** 20:.1f} MiB" for name in (MODEL, TOKENIZER))
    say(f"bundle written to {out}: {sizes} ({time.time() - start:.0f}s)")
    return metadata


def _metadata(source: Source, cfg: ExportConfig, graph: Graph, tmp: Path, keep_fp32: Sequence[str] = ()) -> dict:
    """The bundle's metadata.json as far as the graph goes (verification and gate pairs come after), written."""
    metadata = {
        "format": FORMAT, "toolkit_version": __version__, "variant": cfg.variant, "opset": cfg.opset,
        "arch": source.arch, "inputs": graph.inputs, "output": "output",
        "output_kind": architecture(source.arch).output_kind,
        "max_length": source.config["model"]["max_length"], "pad_id": source.tokenizer.pad_token_id,
        "labels": source.labels.to_dict(), "score_range": source.config.get("resolved", {}).get("score_range"),
        "columns": trained_columns(source.config),
        "base_model": {"name": _portable(source.config["base_model"]["name"]),
                       "weights_sha256": source.config["base_model"]["weights_sha256"]},
        "adapter": {k: source.config["model"].get(k) for k in ("adapter", "reduction_factor", "lora_r",
                                                               "lora_alpha")},
        "merged_from": _merged_from(source.config.get("merged_from")), "parameters": _parameters(source),
        "training_metrics": source.config.get("metrics"), "fused_operators": graph.fused,
        "graph": {"exporter": graph.exporter, "attention": graph.attention,
                  "quantized_ops": list(INT8_OPS) if cfg.variant == "int8" else [],
                  "fp32_matmuls": len(keep_fp32)},
        "files": {name: sha256_file(tmp / name) for name in (MODEL, TOKENIZER)},
    }
    write_json(tmp / METADATA, metadata)
    return metadata


def _portable(name: str) -> str:
    """A model's name as another machine can read it: a short name as is, a local folder by its
    last component (a bundle carries no paths of the machine that built it)."""
    return Path(name).name if ("/" in name or "\\" in name) else name


def _merged_from(merged: Optional[dict]) -> Optional[dict]:
    return None if merged is None else {**merged, "run": _portable(str(merged.get("run", "")))}


def _parameters(source: Source) -> dict:
    params = source.config.get("params") or {}
    metrics_path = source.folder / METRICS
    if not params and metrics_path.is_file():
        params = read_json(metrics_path).get("params", {})
    return params

