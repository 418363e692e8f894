"""Every bounded numeric option holds its documented limits: a value past a limit is refused in one
line that names the flag, the limit itself is taken where it is included, and NaN never passes. The
limits are written out here, not read from the code, so that a slip in an annotation shows."""
from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit.artifacts.onnx_export import ExportConfig
from toolkit.batch.config import ScoreConfig
from toolkit.batch.ray_engine import RayConfig
from toolkit.common.config_io import field_hints
from toolkit.common.errors import ToolkitError
from toolkit.model.config import ModelConfig
from toolkit.robustness.wise import WiseConfig
from toolkit.sources import SourceOptions
from toolkit.training.config import TrainConfig
from toolkit.training.run_data import DataConfig
from toolkit.training.search import SearchConfig

INF = math.inf
# (class, field): (low, low included, high, high included); a tuple field's limits hold for each element
LIMITS = {
    (ModelConfig, "reduction_factor"): (0, False, INF, False),
    (ModelConfig, "lora_r"): (1, True, INF, False),
    (ModelConfig, "max_length"): (8, True, INF, False),
    (ModelConfig, "dropout"): (0, True, 1, False),
    (TrainConfig, "epochs"): (1, True, INF, False),
    (TrainConfig, "batch_size"): (1, True, INF, False),
    (TrainConfig, "global_batch_size"): (1, True, INF, False),
    (TrainConfig, "grad_accum"): (1, True, INF, False),
    (TrainConfig, "lr"): (0, False, INF, False),
    (TrainConfig, "warmup_ratio"): (0, True, 1, False),
    (TrainConfig, "eval_batch_size"): (1, True, INF, False),
    (TrainConfig, "save_steps"): (0, True, INF, False),
    (TrainConfig, "log_steps"): (1, True, INF, False),
    (DataConfig, "dev_fraction"): (0, False, 1, False),
    (SearchConfig, "trials"): (1, True, INF, False),
    (SearchConfig, "lr_min"): (0, False, INF, False),
    (SearchConfig, "lr_max"): (0, False, INF, False),
    (SearchConfig, "epoch_choices"): (1, True, INF, False),
    (SearchConfig, "reduction_factors"): (0, False, INF, False),
    (SearchConfig, "lora_ranks"): (1, True, INF, False),
    (WiseConfig, "tie"): (0, True, INF, False),
    (WiseConfig, "batch_size"): (1, True, INF, False),
    (ExportConfig, "verify_pairs"): (8, True, INF, False),
    (ExportConfig, "threads"): (1, True, INF, False),
    (ScoreConfig, "chunk_size"): (1, True, INF, False),
    (ScoreConfig, "batch_size"): (1, True, INF, False),
    (ScoreConfig, "threads"): (1, True, INF, False),
    (RayConfig, "num_gpus_per_actor"): (0, True, INF, False),
    (RayConfig, "actors"): (1, True, INF, False),
    (RayConfig, "wait_actors_s"): (0, False, INF, False),
    (SourceOptions, "limit"): (1, True, INF, False),
    (SourceOptions, "chunk_size"): (1, True, INF, False),
}
CLASSES = sorted({cls for cls, _ in LIMITS}, key=lambda c: c.__name__)


def _integral(cls: type, name: str) -> bool:
    """Whether the field holds whole numbers (an int, or a tuple of them; Optional and markers aside)."""
    hint = field_hints(cls)[name]
    while typing.get_args(hint) and hint not in (int, float):
        args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
        hint = args[0]
    return hint is int


def _config(cls: type, name: str, value: float):
    """A valid config of ``cls`` (its defaults, plus what it cannot do without) with ``name`` set."""
    base = cls(train="pairs.csv") if cls is DataConfig else cls()
    if cls is SearchConfig and name in ("lr_min", "lr_max") and value > 0:  # the pair's own order check aside
        base = dataclasses.replace(base, lr_min=min(value, base.lr_min), lr_max=max(value, base.lr_max))
    if _integral(cls, name) and float(value).is_integer():
        value = int(value)
    if isinstance(getattr(base, name), tuple):
        value = (value,)
    return dataclasses.replace(base, **{name: value})


def _bounded(cls: type) -> set[str]:
    """The fields whose annotation (or its element's) carries Bounds."""
    return {f.name for f in dataclasses.fields(cls) if "Bounds(" in repr(field_hints(cls)[f.name])}


def test_the_table_names_every_bounded_field():
    assert {(cls, name) for cls in CLASSES for name in _bounded(cls)} == set(LIMITS)


def _refused(cls: type, name: str, value: float) -> None:
    with pytest.raises(ToolkitError) as e:
        _config(cls, name, value).validate()
    message = str(e.value)
    assert message.startswith(f"--{name.replace('_', '-')}") and "\n" not in message, message


@pytest.mark.parametrize("key", list(LIMITS), ids=lambda k: f"{k[0].__name__}.{k[1]}")
def test_each_limit_is_where_it_is_documented(key):
    cls, name = key
    low, low_in, high, high_in = LIMITS[key]
    if low_in:
        _config(cls, name, low).validate()
    else:
        _refused(cls, name, low)
    if high != INF and high_in:
        _config(cls, name, high).validate()
    elif high != INF:
        _refused(cls, name, high)
    _refused(cls, name, low - 1)
    _refused(cls, name, math.nan)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(list(LIMITS)), value=st.floats(-1e6, 1e6, allow_nan=False))
def test_any_value_is_taken_exactly_when_within_the_limits(key, value):
    cls, name = key
    low, low_in, high, high_in = LIMITS[key]
    if _integral(cls, name):
        value = float(math.floor(value))
    inside = (value > low or (low_in and value == low)) and (value < high or (high_in and value == high))
    if inside:
        _config(cls, name, value).validate()
    else:
        _refused(cls, name, value)
