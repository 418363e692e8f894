"""Row checks shared by every format: what makes a pair usable."""
from __future__ import annotations

import math
from typing import Any, Optional


def text_problem(value: Any, column: str) -> Optional[str]:
    if value is None:
        return f"null {column}"
    if not isinstance(value, str):
        return f"{column} is not text ({type(value).__name__} {value!r})"
    if not value.strip():
        return f"empty {column}" if not value else f"whitespace-only {column}"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the reader met bytes that are not UTF-8
            return f"invalid UTF-8 in {column}"
    return None


def parse_score(value: Any, column: str, score_range: Optional[tuple[float, float]]) -> tuple[float, Optional[str]]:
    """The score as a float, or the reason it is not a usable one."""
    if value is None:
        return math.nan, f"null {column}"
    if isinstance(value, bool):
        return math.nan, f"{column} {value!r} is not a number"
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return math.nan, f"empty {column}"
        try:
            x = float(text)
        except ValueError:
            return math.nan, f"{column} {_show(value)} is not a number"
    else:
        return math.nan, f"{column} {_show(value)} is not a number"
    if math.isnan(x):
        return x, f"{column} is NaN"
    if math.isinf(x):
        return x, f"{column} is infinite"
    if score_range is not None and not (score_range[0] <= x <= score_range[1]):
        return x, f"{column} {x:g} outside the declared range {score_range[0]:g}..{score_range[1]:g}"
    return x, None


def label_problem(value: Any, column: str) -> tuple[str, Optional[str]]:
    """An id or group value as text; null or blank is a problem."""
    if value is None:
        return "", f"null {column}"
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return "", f"empty {column}"
    problem = text_problem(text, column)
    return text, problem


def _show(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."
