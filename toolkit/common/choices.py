"""Closed sets of values, as ``Literal`` types: the config fields' annotations, the CLI's choices and
the validation all read them from here (without importing torch: bundles run without it)."""
import dataclasses
import types
import typing
from typing import Any, Literal, get_args

Arch = Literal["bi", "cross"]
Adapter = Literal["seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "none"]
Metric = Literal["spearman", "pearson", "mse", "rmse", "mae"]
Provider = Literal["auto", "cpu", "cuda"]
# what runs a bundle's graph: auto = the fastest that passes its gate on this machine (toolkit/scoring/runtimes.py)
Runtime = Literal["auto", "onnxruntime", "openvino"]
Format = Literal["auto", "csv", "tsv", "stsb", "jsonl", "parquet", "sqlite", "datasets"]
Policy = Literal["fail", "skip", "collect"]
Attention = Literal["auto", "fused", "plain"]
Loss = Literal["mse", "cosent", "angle", "bce"]
Pooling = Literal["cls", "mean"]
HeadActivation = Literal["identity", "sigmoid"]

ARCHS: tuple[str, ...] = get_args(Arch)
ADAPTERS: tuple[str, ...] = get_args(Adapter)
FORMATS: tuple[str, ...] = get_args(Format)
POLICIES: tuple[str, ...] = get_args(Policy)
LOSSES: tuple[str, ...] = get_args(Loss)
RANK_LOSSES = ("cosent", "angle")  # bi-encoders only: they rank the pairs of a batch by their cosine/angle
CROSS_LOSSES = ("mse", "bce")  # bce: cross-encoders only, on the head's logit against the score scaled to 0..1


def check_choices(config: Any) -> None:
    """Each field of a config dataclass typed as one of these sets (or None where optional) holds one of
    its values: the one check for every closed option, with the flag named (a Python caller passes
    strings the type checker may not see)."""
    from toolkit.common.errors import ToolkitError

    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        hint, value = hints[f.name], getattr(config, f.name)
        args = get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
            if value is None:
                continue
            hint = next(a for a in args if a is not type(None))
        allowed = get_args(hint) if typing.get_origin(hint) is Literal else None
        if allowed is not None and value not in allowed:
            raise ToolkitError(f"--{f.name.replace('_', '-')} must be one of {', '.join(map(str, allowed))}, "
                               f"not {value!r}")
