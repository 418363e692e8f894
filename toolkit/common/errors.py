"""Errors a user can act on: the CLI prints them as one line, without a traceback; and the helpers
that keep anything from the input that a message echoes on that one line."""
from __future__ import annotations

from typing import Iterable


class ToolkitError(Exception):
    """A problem with input, configuration or a run directory, stated in one line."""


class BadInputError(ToolkitError):
    """A pair file (or one of its rows) that cannot be used as it is."""


def escape(text: str) -> str:
    """``text`` with each character that would break the line or cannot be written out (newlines,
    tabs, control characters, U+2028, lone surrogates from bytes that were not UTF-8) escaped as
    Python writes it, the rest as it is."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def show(value: object, width: int = 60) -> str:
    """A value from the input, quoted as ``repr`` does (which escapes as ``escape`` does), shortened."""
    return shorten(repr(value), width)


def show_path(path: object) -> str:
    """A file name as typed, escaped where it would break the line."""
    return escape(str(path))


def show_names(names: "Iterable[object]", most: int = 10, width: int = 40) -> str:
    """Column or field names from the input, for a message: escaped, each shortened, at most ``most``."""
    names = list(names)
    shown = ", ".join(shorten(escape(str(n)), width) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def first_line(e: BaseException, width: int = 200) -> str:
    """A library's exception as a message fragment: its first line, escaped and shortened, or its
    type's name when it says nothing."""
    lines = str(e).strip().splitlines()
    if not lines or not lines[0].strip():
        return type(e).__name__
    return shorten(escape(lines[0]), width)
