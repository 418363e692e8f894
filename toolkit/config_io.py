"""Config dataclasses from plain mappings (a run's config.json, a ``--config`` YAML file): one
reader for every config class, nested ones and tuples included, that names an unknown key."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from .errors import ToolkitError, show

T = TypeVar("T")


def _bare(hint: Any) -> Any:
    """The type under ``Optional``/``Annotated``: what a JSON value has to be turned into."""
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                return hint
            hint = args[0]
        else:
            return hint


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """``cls(**data)`` with nested config dataclasses built too and JSON lists made tuples where the
    field is a tuple; ``where`` (a file) heads the one-line error for a key ``cls`` does not have."""
    if not isinstance(data, Mapping):
        raise ToolkitError(f"{where}: expected a mapping of options for {cls.__name__}, got {show(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ToolkitError(f"{where}: unknown option {show(key)} for {cls.__name__}; "
                               f"valid: {', '.join(sorted(names))}")
        bare = _bare(hints[key])
        if dataclasses.is_dataclass(bare) and isinstance(value, Mapping):
            value = from_dict(bare, value, where)
        kwargs[key] = plain_to_field(hints[key], value)
    return cls(**kwargs)


def plain_to_field(hint: Any, value: Any) -> Any:
    """A JSON/YAML list made the tuple a tuple field holds (anything else as it is)."""
    return tuple(value) if typing.get_origin(_bare(hint)) is tuple and isinstance(value, list) else value
