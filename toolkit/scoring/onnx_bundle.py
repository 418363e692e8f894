"""Run an exported bundle with only onnxruntime, tokenizers and numpy: no torch, no transformers.

A bundle is ``model.onnx`` + ``tokenizer.json`` + ``metadata.json`` (written by ``artifacts.onnx_export``), and
``gate.json``: the pairs, gold and PyTorch scores its export gate compared on, carried so that another
engine or precision (OpenVINO; ``runtimes``) is gated again on the machine that serves it.
Loading checks the bundle before anything runs: every file present, each file's sha256 as the
metadata records it, the graph's inputs and outputs as the metadata names them. A cross-encoder
graph maps a tokenised pair to the normalised score; a bi-encoder graph maps a sentence to its
mean-pooled embedding and the score is the cosine, mapped onto the score range here.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, get_args

import numpy as np

from toolkit.common.choices import Provider, Runtime
from toolkit.common.errors import ToolkitError, first_line
from toolkit.scoring.pair_scorer import PairScorer, map_batches

FORMAT = "toolkit-onnx-bundle"
METADATA = "metadata.json"
MODEL = "model.onnx"
TOKENIZER = "tokenizer.json"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


PROVIDERS = get_args(Provider)
RUNTIMES = get_args(Runtime)
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def choose_providers(variant: str, provider: str, available: Sequence[str]) -> list[str]:
    """ONNX Runtime providers, chosen explicitly. int8 bundles run on the CPU provider (their
    dynamically quantised MatMuls are CPU kernels: on CUDA they would run node by node on the CPU);
    fp32 and fp16 bundles on CUDA when asked, or (``auto``) when this onnxruntime has CUDA."""
    if provider not in PROVIDERS:
        raise ToolkitError(f"--provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    if provider == "cpu":
        return [CPU]
    if provider == "cuda":
        if variant == "int8":
            raise ToolkitError("int8 bundles are for CPUs (--provider cpu); export with --fp16 for GPUs")
        if CUDA not in available:
            raise ToolkitError("--provider cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return [CUDA, CPU]
    return [CUDA, CPU] if variant != "int8" and CUDA in available else [CPU]


class OnnxEngine:
    """Tokenises with ``tokenizers`` alone; runs one padded batch through the ONNX Runtime session."""

    runtime = "onnxruntime"

    def __init__(self, session, tokenizer, metadata: dict):
        self.session = session
        self.tokenizer = tokenizer
        self.arch = metadata["arch"]
        self.input_names = list(metadata["inputs"])
        self.output = metadata["output"]
        self.pad_id = int(metadata.get("pad_id") or 0)
        self.timing = {"pad": 0.0, "run": 0.0}  # seconds, for toolkit score's time split

    def tokenize(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list:
        return self.tokenizer.encode_batch(list(zip(texts, pairs)) if pairs is not None else list(texts))

    def feeds(self, batch: list) -> dict[str, np.ndarray]:
        """The padded int64 arrays of one batch, by graph input name."""
        width = max(len(e.ids) for e in batch)
        feeds = {name: np.zeros((len(batch), width), dtype=np.int64) for name in self.input_names}
        feeds["input_ids"].fill(self.pad_id)
        for row, e in enumerate(batch):
            n = len(e.ids)
            feeds["input_ids"][row, :n] = e.ids
            feeds["attention_mask"][row, :n] = e.attention_mask
            if "token_type_ids" in feeds:
                feeds["token_type_ids"][row, :n] = e.type_ids
        return feeds

    def forward(self, batch: list) -> np.ndarray:
        start = time.perf_counter()
        feeds = self.feeds(batch)
        middle = time.perf_counter()
        out = self.session.run([self.output], feeds)[0]
        self.timing["pad"] += middle - start
        self.timing["run"] += time.perf_counter() - middle
        return out.reshape(len(batch), -1).astype(np.float32)

    map_batches = staticmethod(map_batches)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]


class Bundle(PairScorer):
    """A verified bundle on the one scoring path (``predict``, ``encode``/``score_encoded``), served by
    the engine ``load`` chose (``runtimes``: ONNX Runtime, or OpenVINO for fp32 bundles)."""

    def __init__(self, folder: Path, metadata: dict, engine: OnnxEngine, batch_size: int = 64):
        labels = metadata["labels"]
        super().__init__(engine, labels["offset"], labels["scale"], batch_size=batch_size)
        self.folder = folder
        self.metadata = metadata

    @property
    def session(self):
        return self.engine.session

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: Optional[int] = None, provider: str = "auto",
             runtime: str = "onnxruntime", say: Optional[Callable[[str], None]] = None) -> "Bundle":
        """The bundle, verified, on ``runtime``: onnxruntime, openvino, or auto (the fastest engine that
        passes the bundle's gate on this machine, measured once and remembered; ``say`` hears why)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from toolkit.scoring import runtimes

        if runtime not in RUNTIMES:
            raise ToolkitError(f"--runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        folder = Path(folder)
        metadata = _verified_metadata(folder)
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        tokenizer.enable_truncation(int(metadata["max_length"]))
        tokenizer.no_padding()

        def build(candidate: runtimes.Candidate) -> "Bundle":
            if candidate.runtime == "onnxruntime":
                return cls(folder, metadata, OnnxEngine(_session(folder, metadata, threads, provider), tokenizer,
                                                        metadata))
            from toolkit.scoring.openvino_engine import OpenVinoEngine, compile_bundle

            compiled = compile_bundle(folder / MODEL, candidate.precision, "throughput", threads)
            check_graph_io(folder / MODEL, metadata, [i.get_any_name() for i in compiled.inputs],
                           [name for o in compiled.outputs for name in o.get_names()])
            return cls(folder, metadata, OpenVinoEngine(compiled, tokenizer, metadata, candidate.precision,
                                                        "throughput"))

        on_cuda = choose_providers(str(metadata.get("variant")), provider, ort.get_available_providers())[0] == CUDA
        _, bundle = runtimes.choose(folder, metadata, runtime, threads, 64, on_cuda, build, say or (lambda _: None))
        return bundle

    @property
    def provider(self) -> str:
        """Where this bundle runs: ONNX Runtime's execution provider, or OpenVINO's CPU plugin."""
        return self.engine.provider

    def describe(self) -> str:
        """What serves the bundle, as far as it changes the scores (a scoring job's fingerprint)."""
        return f"{self.engine.runtime} {self.provider}, {self.metadata.get('variant')} bundle" + (
            f" at {self.engine.precision}" if self.engine.runtime == "openvino" else "")

    # -- the Run-like interface eval and predict use ----------------------------------------------------
    @property
    def score_range(self) -> Optional[tuple[float, float]]:
        rng = self.metadata.get("score_range")
        return tuple(rng) if rng else None

    def predictor(self, batch_size: int = 64, device: Optional[str] = None) -> "Bundle":
        """The bundle scores itself; ``device`` is chosen by its providers at load."""
        self.batch_size = batch_size
        return self


def _verified_metadata(folder: Path) -> dict:
    """The bundle's metadata, once every file it lists matches its recorded sha256."""
    meta_path = folder / METADATA
    if not meta_path.is_file():
        raise ToolkitError(f"{folder}: not a bundle (no {METADATA})")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{meta_path}: unreadable metadata ({e})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ToolkitError(f"{meta_path}: not a toolkit bundle's metadata (format != {FORMAT})")
    for key in ("files", "arch", "labels", "inputs", "output", "max_length"):
        if key not in metadata:
            raise ToolkitError(f"{meta_path}: metadata lacks {key!r}")
    for name in (MODEL, TOKENIZER):
        if name not in metadata["files"]:
            raise ToolkitError(f"{meta_path}: no sha256 recorded for {name}")
    for name, digest in metadata["files"].items():
        path = folder / name
        if not path.is_file():
            raise ToolkitError(f"{folder}: bundle file {name} is missing")
        if sha256_file(path) != digest:
            raise ToolkitError(f"{path}: sha256 does not match the bundle's metadata (modified or corrupted)")
    return metadata


def _session(folder: Path, metadata: dict, threads: Optional[int], provider: str):
    """An ONNX Runtime session on the chosen provider, its inputs and output checked against the metadata."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    chosen = choose_providers(str(metadata.get("variant")), provider, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(folder / MODEL), options, providers=chosen)
    except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
        raise ToolkitError(f"{folder / MODEL}: onnxruntime cannot load it ({first_line(e)})") from None
    check_graph_io(folder / MODEL, metadata, [i.name for i in session.get_inputs()],
                   [o.name for o in session.get_outputs()])
    return session


def check_graph_io(path: Path, metadata: dict, inputs: list[str], outputs: list[str]) -> None:
    """The graph's inputs and outputs as the metadata names them (whichever engine read the graph)."""
    if sorted(inputs) != sorted(metadata["inputs"]):
        raise ToolkitError(f"{path}: graph inputs {inputs} are not the bundle's {metadata['inputs']}")
    if metadata["output"] not in outputs:
        raise ToolkitError(f"{path}: graph outputs {outputs} lack {metadata['output']!r}")
