"""What every reader provides, and the file checks shared by the text formats."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Optional, Union

from toolkit.common.errors import BadInputError, show, show_path
from toolkit.sources.options import SourceOptions
from toolkit.sources.records import RawChunk, Split

SNIFF_BYTES = 1 << 16
UTF8_BOM = b"\xef\xbb\xbf"


class Reader(ABC):
    """Streams the records of one file in chunks; knows nothing about what a good row is.

    ``loc_kind`` says whether locations are lines (text formats) or rows (tables); ``layout``
    names a recognised layout whose defaults apply (only "stsb" today); ``names`` are the
    columns the file has, or None where each record carries its own (JSONL). A ``splittable``
    reader starts ``raw_chunks`` at any chunk's ``start`` (an earlier read's), so that parts of one
    file are read by separate tasks. A reader declares these in its class line, ``class
    ParquetReader(Reader, loc_kind="row", splittable=True, description="Parquet")``; ``description``
    may be set again once the file is opened (the layout found).
    """

    loc_kind: str = "line"
    splittable: bool = False
    layout: Optional[str] = None
    description: str = ""

    def __init_subclass__(cls, loc_kind: str = "line", splittable: bool = False, description: str = "", **kw):
        super().__init_subclass__(**kw)
        cls.loc_kind, cls.splittable, cls.description = loc_kind, splittable, description

    def __init__(self, path: Path, options: SourceOptions):
        self.path = path
        self.options = options

    @property
    @abstractmethod
    def names(self) -> Optional[list[str]]: ...

    @abstractmethod
    def raw_chunks(self, needed: list[str], chunk_size: int, start: Optional[Split] = None) -> Iterator[RawChunk]:
        """Chunks of ``chunk_size`` records from the start of the file, or from ``start`` (splittable
        readers only)."""

    def where(self, loc: Optional[int] = None) -> str:
        """``FILE:LINE`` for text formats, ``FILE:row N`` for tables, ``FILE`` for the whole file."""
        path = show_path(self.path)
        if loc is None:
            return path
        return f"{path}:{loc}" if self.loc_kind == "line" else f"{path}:row {loc}"

    def fail(self, message: str, loc: Optional[int] = None) -> BadInputError:
        return BadInputError(f"{self.where(loc)}: {message}")

    def name_error(self, name: Union[bytes, str], what: str = "a column name") -> BadInputError:
        """A name in the file that is not UTF-8, which pyarrow and sqlite3 refuse to decode (so the
        file cannot be read through them), said as its bytes with the first bad one and its offset,
        as the row checks say it for values. ``name``: the bytes, or text holding them as lone
        surrogates (surrogateescape)."""
        raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else bytes(name)
        try:
            raw.decode("utf-8")
            where = ""
        except UnicodeDecodeError as e:
            where = f" (byte 0x{raw[e.start]:02x} at byte {e.start + 1})"
        return self.fail(f"{what} is not valid UTF-8: {show(raw, 60)}{where}")

    def check_needed(self, needed: list[str], names: Optional[list[str]] = None, where: str = "") -> None:
        """Refuses a needed column that ``names`` (the file's, by default) hold more than once: which
        one holds the data would be a guess. ``where``: the part of the file those names are from."""
        names = self.names if names is None else names
        for name in needed:
            count = 0 if names is None else names.count(name)
            if count > 1:
                raise self.fail(f"{where}{count} columns named {show(name, 40)}: which to read is ambiguous")


def native_path(path: Path) -> bytes:
    """The path as the file system has it, for libraries that take only UTF-8 paths as text (pyarrow,
    SQLite URIs): a name holding bytes that are not UTF-8 (Python keeps them as lone surrogates) opens."""
    return os.fsencode(path)


def require_file(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"{show_path(path)}: no such file")
    if path.is_dir():
        raise BadInputError(f"{show_path(path)}: is a folder, expected a pair file")


def sniff_text(path: Path) -> bytes:
    """First bytes of a text pair file; refuses empty and binary files before any parsing."""
    require_file(path)
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    body = head[len(UTF8_BOM):] if head.startswith(UTF8_BOM) else head
    where = show_path(path)
    if not body.strip():
        raise BadInputError(f"{where}: empty file")
    if head.startswith(b"PAR1"):
        raise BadInputError(f"{where}: this is a Parquet file; name it .parquet or pass --format parquet")
    if head.startswith(b"SQLite format 3\x00"):
        raise BadInputError(f"{where}: this is a SQLite database; name it .db or pass --format sqlite")
    if b"\x00" in head:
        raise BadInputError(f"{where}: binary file (NUL bytes), not a text pair file")
    return body
