"""What torch's ONNX exporter wrote for a model, kept on disk for the next export of the same model.

The export (dynamo: tracing, decompositions, translation) takes ~9 s of the ~20 s `toolkit export`
spends on a MiniLM run on a 2-core CPU, and its result depends only on the model and the export
settings, not on the variant made from it afterwards (fp32, fp16, int8) or on the gate. The main job
exports each run twice (fp32, then int8, one process each), a refused int8 export is tried again, a
notebook exports fp32 and then fp16: each exports the model once. Torch has no such cache for
torch.onnx.export (inductor's caches serve compilation, not export).

Entries live in the toolkit's cache folder (``onnx-graphs/``), keyed by the bytes of every weight and the
export settings, so a changed model is never served an old graph; each records its graph's sha256,
checked on every read (a damaged entry is exported again); the entries used last are kept, up to
BUDGET bytes. The cache is an aid: where it cannot be read or written, the model is exported as
without it. The gate still checks every bundle against PyTorch.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from toolkit.common.atomic_io import atomic_path, write_json
from toolkit.common.cache_dir import cache_dir

BUDGET = 1 << 30  # bytes of graphs kept (a MiniLM-L6 graph is ~90 MB); the newest entry is always kept
LARGEST = 1 << 30  # larger graphs are not kept (and past 2 GB ONNX keeps weights in files beside the graph)


def graph_key(module: torch.nn.Module, settings: dict) -> str:
    """The model's weights and buffers (names, dtypes, shapes, bytes) and the export settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def graphs_dir() -> Path:
    return cache_dir() / "onnx-graphs"


def exported(key: str, path: Path, export: Callable[[], list[str]]) -> tuple[list[str], bool]:
    """Writes the graph for ``key`` to ``path``: the one kept from an earlier export, or ``export()``'s
    (then kept). Returns the graph's input names, and whether it was kept from before."""
    names = _read(key, path)
    if names is not None:
        return names, True
    names = export()
    beside = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.stem)]
    if path.stat().st_size <= LARGEST and not beside:
        try:
            _keep(key, path, names)
        except OSError:
            pass  # a full disk or a read-only cache folder: this export is simply not kept
    return names, False


def _read(key: str, path: Path) -> Optional[list[str]]:
    folder = graphs_dir()
    try:
        entry = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
        data = (folder / f"{key}.onnx").read_bytes()
    except (OSError, ValueError):
        return None
    if (not isinstance(entry, dict) or not isinstance(entry.get("inputs"), list)
            or entry.get("sha256") != hashlib.sha256(data).hexdigest()):
        return None  # damaged, or half of a pair being replaced: export again
    path.write_bytes(data)
    try:
        os.utime(folder / f"{key}.json")  # used last: kept longest
    except OSError:
        pass
    return [str(name) for name in entry["inputs"]]


def _keep(key: str, path: Path, names: list[str]) -> None:
    folder = graphs_dir()
    data = path.read_bytes()
    with atomic_path(folder / f"{key}.onnx") as tmp:
        tmp.write_bytes(data)
    write_json(folder / f"{key}.json", {"sha256": hashlib.sha256(data).hexdigest(), "inputs": list(names),
                                        "bytes": len(data)})
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for i, entry in enumerate(entries):
        graph = entry.with_suffix(".onnx")
        total += graph.stat().st_size if graph.exists() else 0
        if i and total > BUDGET:
            entry.unlink(missing_ok=True)
            graph.unlink(missing_ok=True)
