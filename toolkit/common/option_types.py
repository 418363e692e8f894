"""What the config dataclasses say about their fields as options, without naming any CLI library
(the CLI layer reads it): types written as one token in their own way (a score range ``0:5``, a
shard ``3/16``, an α grid ``0:1:0.1``: the ``Spelling`` in the field's annotation, so the field, its
parser and its help live in one place), the numbers a numeric option accepts (``Bounds``, in the
annotation too), and fields a command sets rather than the user. ``check_options`` holds a config to
its annotations: every ``validate`` starts with it."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Callable, Literal, Optional

from toolkit.common.config_io import field_hints, unwrap
from toolkit.common.errors import ToolkitError, show

# field metadata of a value the command sets (``need_score``, ...): not an option of any command
SET_BY_COMMAND = MappingProxyType({"option": False})


def is_option(f: dataclasses.Field) -> bool:
    return f.metadata.get("option", True)


@dataclass(frozen=True)
class Spelling:
    """How a value of the annotated type is written as one command-line token, and read back."""

    metavar: str
    parse: Callable[[str], object]
    show: Callable[[object], str]


def parse_range(text: str) -> tuple[float, float]:
    """``LOW:HIGH`` (or ``LOW,HIGH``), LOW below HIGH."""
    try:
        lo, hi = (float(p) for p in text.replace(",", ":").split(":"))
    except ValueError:
        raise ToolkitError(f"--score-range: expected LOW:HIGH, e.g. 0:5, not {text!r}") from None
    if not lo < hi:
        raise ToolkitError(f"--score-range {text!r}: LOW must be below HIGH")
    return lo, hi


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N``: shard I of N, 0-based."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ToolkitError(f"--shard: expected I/N, e.g. 3/16, not {text!r}") from None
    if not 0 <= i < n:
        raise ToolkitError(f"--shard {text}: need 0 <= I < N")
    return i, n


def parse_alphas(text: str) -> list[float]:
    """``0:1:0.1`` (start:stop:step, stop included) or ``0,0.5,1``."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9))
            values = [round(start + i * step, 10) for i in range(n + 1)]
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ToolkitError(f"--alphas {text!r}: expected START:STOP:STEP (e.g. 0:1:0.1) or a list (0,0.5,1)") from None
    return sorted(set(values))


ScoreRange = Annotated[tuple[float, float], Spelling("LOW:HIGH", parse_range, lambda r: f"{r[0]:g}:{r[1]:g}")]
Shard = Annotated[tuple[int, int], Spelling("I/N", parse_shard, lambda s: f"{s[0]}/{s[1]}")]
Alphas = Annotated[list[float], Spelling("START:STOP:STEP|A,B,...", parse_alphas,
                                         lambda a: ",".join(f"{x:g}" for x in a))]


@dataclass(frozen=True)
class Bounds:
    """The numbers a numeric option accepts (each element's, for a tuple of numbers)."""

    low: float
    high: Optional[float] = None  # refused itself: every bounded share stops short of it
    low_open: bool = False  # ``low`` itself refused

    def holds(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low  # False for NaN, as below
        below = self.high is None or x < self.high
        return above and below

    def says(self) -> str:
        if self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g})"
        if self.low_open:
            return "positive" if self.low == 0 else f"more than {self.low:g}"
        return "0 or more" if self.low == 0 else f"at least {self.low:g}"


Count = Annotated[int, Bounds(1)]
Positive = Annotated[float, Bounds(0, low_open=True)]
NonNegative = Annotated[float, Bounds(0)]
Share = Annotated[float, Bounds(0, 1)]  # a fraction: 0 included, 1 not


def check_options(config: Any) -> None:
    """Each field of a config dataclass holds what its annotation allows: one of a ``Literal``'s values,
    a number within its ``Bounds``, for a tuple each element, None where optional. The one check of
    every closed or bounded option, with the flag named (a Python caller passes values the type checker
    may not see)."""
    hints = field_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        bare, markers = unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        many = typing.get_origin(bare) in (tuple, list) and isinstance(value, (tuple, list))
        if many:
            bare, inner = unwrap(typing.get_args(bare)[0])
            markers, flag = markers + inner, flag + ": each value"
        allowed = typing.get_args(bare) if typing.get_origin(bare) is Literal else None
        for x in value if many else (value,):
            if allowed is not None and x not in allowed:
                raise ToolkitError(f"{flag} must be one of {', '.join(map(str, allowed))}, not {show(x)}")
            for bounds in (m for m in markers if isinstance(m, Bounds)):
                if not bounds.holds(x):
                    raise ToolkitError(f"{flag} must be {bounds.says()}, not {show(x)}")
