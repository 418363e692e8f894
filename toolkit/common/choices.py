"""Closed sets of values, as ``Literal`` types: the config fields' annotations, the CLI's choices and
the validation (option_types.check_options) all read them from here (without importing torch:
bundles run without it)."""
from typing import Literal, get_args

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

