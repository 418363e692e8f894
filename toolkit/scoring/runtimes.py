"""Which engine serves a bundle on this machine (``--runtime``): the candidates, their gate, a short
measurement, and the memory of it.

A bundle can be served by ONNX Runtime (its own precision: the graph as exported) or, for an fp32
bundle with the ``openvino`` extra installed, by OpenVINO at bf16 (CPUs with AMX or AVX512-BF16)
or f32. ``auto`` scores the bundle's gate pairs (``gate.json``: dev pairs with gold scores and
PyTorch's scores, written at export) with each candidate: the gate (Spearman change against PyTorch
within the bundle's limit) and the throughput come from the same pass, and the fastest candidate
that passes serves (another engine in ONNX Runtime's place only when clearly faster: ``SWITCH_RATIO``).
The choice is remembered per bundle and machine (CPU model and extensions, cores, threads, batch
size, library versions), so later commands skip the measurement.

No library does this choice: ONNX Runtime and OpenVINO each tune themselves, not against each other,
and neither knows the quality the bundle must keep.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from toolkit.common.cache_dir import cache_dir
from toolkit.common.errors import ToolkitError

GATE = "gate.json"
DEFAULT_LIMIT = 0.3  # Spearman points a candidate may lose against PyTorch where the bundle records none
# Another engine serves in ONNX Runtime's place only when at least this much faster: where two are within
# noise of each other (OpenVINO f32 and ONNX Runtime fp32 on AVX2 CPUs, 1.0-1.1x) a choice by the faster
# would flip between runs and machines of one class, and with it the scores' last digits.
SWITCH_RATIO = 1.2


@dataclass(frozen=True)
class Candidate:
    runtime: str  # "onnxruntime" or "openvino"
    precision: str  # onnxruntime: the bundle's variant (fp32/fp16/int8); openvino: bf16 or f32

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass
class Measured:
    candidate: Candidate
    rate: float = 0.0  # pairs per second over the gate pairs
    drop: Optional[float] = None  # Spearman points lost against PyTorch
    note: str = ""  # why it was not measured or cannot serve

    @property
    def passed(self) -> bool:
        return not self.note


def candidates(variant: str, runtime: str, on_cuda: bool) -> tuple[list[Candidate], str]:
    """What may serve a bundle of ``variant`` when ``runtime`` is asked, and why others are out."""
    ort = Candidate("onnxruntime", variant)
    if runtime == "onnxruntime":
        return [ort], "asked for"
    from toolkit.scoring import openvino_engine

    why = ("the bundle runs on CUDA" if on_cuda else
           "OpenVINO is not installed (pip install 'sentence-pair-toolkit[openvino]')" if not openvino_engine.available()
           else f"OpenVINO serves fp32 bundles (this one is {variant}: its quantised operators are ONNX Runtime's "
                "kernels, which OpenVINO runs far slower)" if variant != "fp32" else "")
    if runtime == "openvino":
        if why:
            raise ToolkitError(f"--runtime openvino: {why}")
        return [Candidate("openvino", p) for p in openvino_engine.cpu_precisions()], ""
    if why:
        return [ort], why
    return [ort, *(Candidate("openvino", p) for p in openvino_engine.cpu_precisions())], ""


def cache_path() -> Path:
    return cache_dir() / "runtimes.json"


def machine_key(metadata: dict, threads: Optional[int], batch_size: int, variant: str, runtime: str) -> str:
    """What a measurement depends on: the bundle's graph and gate, this CPU, the settings, the libraries."""
    from importlib.metadata import PackageNotFoundError, version

    from toolkit.common.machine import cores, cpu

    def have(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return ""

    model, flags = cpu()
    key = {"graph": metadata["files"].get("model.onnx"), "gate": metadata["files"].get(GATE), "cpu": model,
           "flags": flags, "cores": cores(), "threads": threads, "batch": batch_size, "variant": variant,
           "runtime": runtime, "onnxruntime": have("onnxruntime") or have("onnxruntime-gpu"),
           "openvino": have("openvino")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


@contextlib.contextmanager
def _locked_cache():
    """The cache's entries, under an exclusive lock; written back (atomically) when the block changes them."""
    from toolkit.common.atomic_io import write_json

    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".runtimes.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            entries = {}  # a damaged cache is measured again, not trusted
        before = json.dumps(entries, sort_keys=True)
        yield entries
        if json.dumps(entries, sort_keys=True) != before:
            write_json(path, entries)


def read_gate(folder: Path) -> Optional[dict]:
    path = folder / GATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def spearman_drop(pred: np.ndarray, gate: dict) -> float:
    """Spearman points lost against PyTorch on the gate pairs, computed as the export gate computes them."""
    from toolkit.scoring.metrics import evaluate_predictions

    gold = np.asarray(gate["gold"], dtype=np.float64)
    ref = evaluate_predictions(np.asarray(gate["reference"], dtype=np.float64), gold, ci=False)[0]["spearman"]
    return float(100 * (ref - evaluate_predictions(np.asarray(pred, dtype=np.float64), gold, ci=False)[0]["spearman"]))


def measure(scorer, gate: dict, limit: float) -> tuple[float, float, np.ndarray]:
    """(pairs/s, Spearman drop, predictions) of ``scorer`` on the gate pairs, after a warm-up batch."""
    s1, s2 = gate["s1"], gate["s2"]
    scorer.predict(s1[:scorer.batch_size], s2[:scorer.batch_size])  # first-batch set-up is not throughput
    start = time.perf_counter()
    pred = scorer.predict(s1, s2)
    rate = len(s1) / max(time.perf_counter() - start, 1e-9)
    return rate, spearman_drop(pred, gate), pred


def choose(folder: Path, metadata: dict, runtime: str, threads: Optional[int], batch_size: int, on_cuda: bool,
           build: Callable[[Candidate], object], say: Callable[[str], None]) -> tuple[Candidate, object]:
    """The candidate that serves, and its engine (``build(candidate)``). One candidate: no measurement.
    Several: each is gated and timed on the bundle's gate pairs (or the remembered result is used)."""
    variant = str(metadata.get("variant"))
    options, why = candidates(variant, runtime, on_cuda)
    gate = read_gate(folder) if len(options) > 1 else None
    if len(options) > 1 and gate is None:
        options, why = options[:1], f"the bundle carries no {GATE} to gate others on: export it again"
    if len(options) == 1:
        engine = build(options[0])
        if runtime == "auto":
            say(f"runtime auto: {options[0].label} ({why})")
        return options[0], engine

    from toolkit.common.machine import cpu

    key = machine_key(metadata, threads, batch_size, variant, runtime)
    with _locked_cache() as entries:
        remembered = entries.get(key)
    limit = float(gate.get("limit_spearman_drop", DEFAULT_LIMIT))
    if remembered and remembered.get("chosen") in {c.label for c in options}:
        chosen = next(c for c in options if c.label == remembered["chosen"])
        engine = build(chosen)
        say(f"runtime {runtime}: {chosen.label} ({remembered['why']}; measured {remembered['date']} on this "
            f"machine, remembered in {cache_path()})")
        return chosen, engine

    results, engines = [], {}
    for candidate in options:
        if candidate.runtime == "openvino" and candidate.precision == "f32" and any(
                r.passed and r.candidate.runtime == "openvino" for r in results):
            results.append(Measured(candidate, note="not measured: bf16 passed, and is faster where the CPU has it"))
            continue
        try:
            engine = build(candidate)
            rate, drop, _ = measure(engine, gate, limit)
        except ToolkitError as e:
            if candidate.runtime == "onnxruntime":
                raise  # the reference engine cannot read the bundle: it is broken, whatever else could
            results.append(Measured(candidate, note=str(e)))
            continue
        results.append(Measured(candidate, rate, drop, "" if drop <= limit else
                                f"loses {drop:.2f} Spearman points on the gate pairs (limit {limit:g})"))
        engines[candidate] = engine
    passing = [r for r in results if r.passed]
    if not passing:
        raise ToolkitError(f"{folder}: no engine passes the bundle's gate on this machine: "
                           + "; ".join(f"{r.candidate.label}: {r.note}" for r in results))
    best = max(passing, key=lambda r: r.rate)
    ort = next((r for r in passing if r.candidate.runtime == "onnxruntime"), None)
    kept = ort is not None and best is not ort and best.rate < SWITCH_RATIO * ort.rate
    if kept:
        best = ort
    others = ", ".join(f"{r.candidate.label} {r.rate:,.0f}" if r.passed else f"{r.candidate.label} ({r.note})"
                       for r in results if r is not best)
    what = (f"kept: no other engine is {SWITCH_RATIO:g}x faster" if kept else "fastest that passes the gate")
    why = (f"{what}: {best.rate:,.0f} pairs/s, Spearman change {-best.drop:+.2f} on "
           f"{len(gate['s1'])} gate pairs (limit {limit:g}); {others}")
    with _locked_cache() as entries:
        entries[key] = {"chosen": best.candidate.label, "why": why, "cpu": " ".join(cpu()[:1]),
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                        "measured": {r.candidate.label: {"pairs_per_s": r.rate, "spearman_drop": r.drop,
                                                         "note": r.note} for r in results}}
    say(f"runtime {runtime}: {best.candidate.label} ({why}; measured now, remembered in {cache_path()})")
    return best.candidate, engines[best.candidate]
