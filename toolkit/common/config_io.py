"""Config dataclasses from plain mappings (a run's config.json, a ``--config`` YAML file): one
reader for every config class, nested ones and tuples included, that names an unknown key."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Mapping, TypeVar

from toolkit.common.errors import ToolkitError, show

T = TypeVar("T")


def unwrap(hint: Any) -> tuple[Any, tuple]:
    """The type under ``Optional``/``Annotated`` (what a value has to be), and the ``Annotated``
    markers met on the way (a ``Spelling``, ``Bounds``: option_types)."""
    markers: tuple = ()
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint, markers = typing.get_args(hint)[0], markers + typing.get_args(hint)[1:]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                return hint, markers
            hint = args[0]
        else:
            return hint, markers


def _bare(hint: Any) -> Any:
    return unwrap(hint)[0]


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """A config class's field types, markers kept (resolved once per class: each is asked per field)."""
    return typing.get_type_hints(cls, include_extras=True)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """``cls(**data)`` with nested config dataclasses built too and JSON lists made tuples where the
    field is a tuple; ``where`` (a file) heads the one-line error for a key ``cls`` does not have."""
    if not isinstance(data, Mapping):
        raise ToolkitError(f"{where}: expected a mapping of options for {cls.__name__}, got {show(data)}")
    hints = field_hints(cls)
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


def checked(name: str, hint: Any, value: Any) -> Any:
    """``value`` for the option ``name`` of type ``hint`` (a list made a tuple; a number YAML left as
    text, such as ``1e-3``, made a float), or a one-line error: a keyword argument or a config file
    gets the type check the command line's parser gives."""
    import typeguard

    value = plain_to_field(hint, value)
    try:
        typeguard.check_type(value, hint)
        return value
    except typeguard.TypeCheckError:
        pass
    spelling = _spelling(hint)
    if isinstance(value, str) and spelling is not None:  # written as on the command line: 0:5, 3/16
        return spelling.parse(value)
    if isinstance(value, str):
        try:
            number = float(value)
            typeguard.check_type(number, hint)
            return number
        except (ValueError, typeguard.TypeCheckError):
            pass
    raise ToolkitError(f"{name}={show(value)}: expected {type_name(hint)}")


def _spelling(hint: Any) -> Any:
    """The ``Spelling`` (option_types) of a field type, under ``Optional`` too, or None."""
    from toolkit.common.option_types import Spelling

    return next((m for m in unwrap(hint)[1] if isinstance(m, Spelling)), None)


def type_name(hint: Any) -> str:
    """A type as a message names it: ``int``, ``str or None``, ``one of 'bi', 'cross'``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if hint is type(None):
        return "None"
    if origin in (tuple, list):
        return f"a list of {type_name(args[0])}" if len(args) == 1 or args[-1] is Ellipsis else \
            f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    return getattr(hint, "__name__", str(hint))
