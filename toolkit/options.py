"""Each command's keyword options: which config dataclasses hold them, and flat keywords built into
instances of those classes (nested ones included: ``SourceOptions``'s ``Columns``). The Python API
(api.py) and the CLI (cli.py) both read the options from here, so each is defined once."""
from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.common.config_io import field_hints
from toolkit.common.errors import ToolkitError
from toolkit.common.option_types import is_option


def option_classes(command: str) -> tuple[type, ...]:
    """The config dataclasses whose fields are ``command``'s keyword options (imported here, per
    command: scoring a bundle imports no torch)."""
    from toolkit.sources import SourceOptions

    if command == "train":
        from toolkit.model.config import ModelConfig
        from toolkit.training.config import TrainConfig
        from toolkit.training.run_data import DataConfig

        return ModelConfig, TrainConfig, DataConfig
    if command == "search":
        from toolkit.model.config import ModelConfig
        from toolkit.training.config import TrainConfig
        from toolkit.training.run_data import DataConfig
        from toolkit.training.search import SearchConfig

        return ModelConfig, TrainConfig, DataConfig, SearchConfig
    if command == "distill":
        from toolkit.distill.distillation import DistillConfig
        from toolkit.model.config import ModelConfig
        from toolkit.training.config import TrainConfig
        from toolkit.training.run_data import DataConfig

        return ModelConfig, TrainConfig, DataConfig, DistillConfig
    if command == "export":
        from toolkit.artifacts.onnx_export import ExportConfig

        return (ExportConfig,)
    if command == "score":
        from toolkit.batch.config import ScoreConfig
        from toolkit.batch.ray_engine import RayConfig

        return ScoreConfig, RayConfig, SourceOptions
    if command == "wise":
        from toolkit.robustness.wise import WiseConfig

        return WiseConfig, SourceOptions
    if command in ("check", "evaluate"):
        return (SourceOptions,)
    return ()


def _leaves(cls: type) -> list[dataclasses.Field]:
    """Every field of ``cls`` that is an option, nested config classes opened."""
    hints = field_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaves(hints[f.name])
        elif is_option(f):
            out.append(f)
    return out


def option_names(command: str) -> list[str]:
    """``command``'s keyword options, in the order of its config classes (each defined once)."""
    return [f.name for cls in option_classes(command) for f in _leaves(cls)]


def option_fields(config: Any) -> list[tuple[Any, str]]:
    """(owner, name) of each option in a config instance, nested instances opened."""
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out += option_fields(value)
        elif is_option(f):
            out.append((config, f.name))
    return out


# the keyword under which a Python caller passes a whole config object (api.py's typed parameters)
CONFIG_PARAMS = {"ModelConfig": "model_config", "TrainConfig": "train_config", "DataConfig": "data_config",
                 "SearchConfig": "search_config", "ExportConfig": "export_config", "ScoreConfig": "score_config",
                 "RayConfig": "ray_config", "WiseConfig": "wise_config", "SourceOptions": "source_options",
                 "DistillConfig": "distill_config"}


def _build(cls: type, options: dict[str, Any], used: set[str], base: Any = None) -> Any:
    """An instance of ``cls``: ``base``'s values (a config object the caller passed) or the defaults,
    with the keyword options for its fields on top."""
    from toolkit.common.config_io import checked

    hints = field_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], options, used, None if base is None else getattr(base, f.name))
        elif f.name in options:
            kwargs[f.name] = checked(f.name, hints[f.name], options[f.name])
            used.add(f.name)
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def configs(command: str, options: dict[str, Any], given: dict[str, Any] | None = None) -> list[Any]:
    """``options`` (flat keyword options) as the instances of ``command``'s config classes, each
    starting from the config object in ``given`` (by its ``CONFIG_PARAMS`` name) where there is one;
    an unknown name is refused with the valid ones, a given object of the wrong class too."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    used: set[str] = set()
    built = []
    for cls in option_classes(command):
        base = given.pop(CONFIG_PARAMS[cls.__name__], None)
        if base is not None and not isinstance(base, cls):
            raise ToolkitError(f"{CONFIG_PARAMS[cls.__name__]}: expected a {cls.__name__}, got {type(base).__name__}")
        built.append(_build(cls, options, used, base))
    if given:
        raise ToolkitError(f"{command} takes no {', '.join(given)}")
    unknown = sorted(set(options) - used)
    if unknown:
        raise ToolkitError(f"unknown option {unknown[0]!r}; valid: {', '.join(sorted(option_names(command)))}")
    return built
