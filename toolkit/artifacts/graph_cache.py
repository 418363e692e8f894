"""What torch's ONNX exporter wrote for a model, kept in memory for the next variant of the same model.

The export (dynamo: tracing, decompositions, translation) takes ~9 s of the ~20 s `toolkit export`
spends on a MiniLM run on a 2-core CPU, and its result depends only on the model and the export
settings, not on the variant made from it afterwards (fp32, fp16, int8) or on the gate. A process
that exports one model several times (fp32 and then int8 from Python, a refused int8 export tried
again) exports it once. Keyed by the bytes of every weight, so a changed model is never served an
old graph; the gate still checks every bundle against PyTorch. Torch has no such cache for
torch.onnx.export.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

KEEP = 2  # graphs kept (a MiniLM graph is ~90 MB): the model being exported and one other
LARGEST = 1 << 30  # larger graphs are not kept (and past 2 GB ONNX keeps weights in files beside the graph)
_graphs: OrderedDict[str, tuple[bytes, list[str]]] = OrderedDict()


def graph_key(module: torch.nn.Module, settings: dict) -> str:
    """The model's weights and buffers (names, dtypes, shapes, bytes) and the export settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def exported(key: str, path: Path, export: Callable[[], list[str]]) -> list[str]:
    """Writes the graph for ``key`` to ``path``: the one kept from an earlier export, or ``export()``'s;
    returns the graph's input names."""
    if key in _graphs:
        _graphs.move_to_end(key)
        data, names = _graphs[key]
        path.write_bytes(data)
        return list(names)
    names = export()
    beside = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.stem)]
    if path.stat().st_size <= LARGEST and not beside:
        _graphs[key] = (path.read_bytes(), list(names))
        while len(_graphs) > KEEP:
            _graphs.popitem(last=False)
    return names
