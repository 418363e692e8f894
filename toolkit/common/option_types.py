"""What the config dataclasses say about their fields as options, without naming any CLI library
(the CLI layer reads it): types written as one token in their own way (a score range ``0:5``, a
shard ``3/16``, an α grid ``0:1:0.1``: the ``Spelling`` in the field's annotation, so the field, its
parser and its help live in one place), and fields a command sets rather than the user."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Callable

from toolkit.common.errors import ToolkitError

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
