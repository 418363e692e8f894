"""Row checks shared by every format: what makes a pair usable."""
from __future__ import annotations

import math
from typing import Any, Optional

from toolkit.common.errors import escape, show


def _utf8_problem(value: str, column: str) -> Optional[str]:
    """Lone surrogates: bytes that were not UTF-8 (kept by the readers' surrogateescape, U+DC80..DCFF)
    or a JSON escape of half a surrogate pair; said with the byte and its offset in the field."""
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        offset = len(value[:e.start].encode("utf-8", "surrogateescape"))
        if 0xDC80 <= code <= 0xDCFF:
            return f"invalid UTF-8 in {escape(column)}: byte 0x{code - 0xDC00:02x} at byte {offset + 1} of the field"
        return f"invalid text in {escape(column)}: a lone surrogate U+{code:04X} at byte {offset + 1} of the field"


def text_problem(value: Any, column: str) -> Optional[str]:
    if value is None:
        return f"null {escape(column)}"
    if not isinstance(value, str):
        return f"{escape(column)} is not text ({type(value).__name__} {show(value, 40)})"
    if not value.strip():
        return f"empty {escape(column)}" if not value else f"whitespace-only {escape(column)}"
    if not value.isascii():
        return _utf8_problem(value, column)
    return None


def parse_score(value: Any, column: str, score_range: Optional[tuple[float, float]]) -> tuple[float, Optional[str]]:
    """The score as a float, or the reason it is not a usable one."""
    column = escape(column)
    if value is None:
        return math.nan, f"null {column}"
    if isinstance(value, bool):
        return math.nan, f"{column} {value!r} is not a number"
    if isinstance(value, (int, float)):
        try:
            x = float(value)
        except OverflowError:  # an integer beyond float range (SQLite, JSON)
            return math.nan, f"{column} {show(value, 40)} is out of range"
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return math.nan, f"empty {column}"
        try:
            x = float(text)
        except ValueError:
            return math.nan, f"{column} {show(value, 40)} is not a number"
    else:
        return math.nan, f"{column} {show(value, 40)} is not a number"
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
        return "", f"null {escape(column)}"
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        return "", f"empty {escape(column)}"
    problem = text_problem(text, column)
    return text, problem
