"""JSON Lines: one object per line; each line is decoded on its own so errors name their line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

from toolkit.common.errors import show, show_names
from toolkit.sources.base import UTF8_BOM, Reader, sniff_text
from toolkit.sources.options import SourceOptions
from toolkit.sources.records import RawChunk, Split


class _Repeated(dict):
    """An object that names a key more than once (json keeps the last silently): ``repeated`` lists those keys."""

    repeated: set


def _object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        obj, seen = _Repeated(obj), set()
        obj.repeated = set()
        for key, _ in pairs:
            (obj.repeated if key in seen else seen).add(key)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object)


class JsonlReader(Reader, loc_kind="line", splittable=True, description="JSON Lines"):
    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        sniff_text(path)

    @property
    def names(self) -> Optional[list[str]]:
        return None  # each object names its own fields

    def raw_chunks(self, needed: list[str], chunk_size: int, start: Optional[Split] = None) -> Iterator[RawChunk]:
        start = start or Split()
        chunk = RawChunk.empty(needed, start)
        row, offset = start.row, start.offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            for lineno, line in enumerate(f, start.line):
                offset += len(line)
                if lineno == 1 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                if not line.strip():
                    continue  # a blank line is not a row
                row += 1
                obj, problem = self._parse(line, needed)
                chunk.add_record(lineno, row, problem, obj, needed)
                if chunk.size >= chunk_size:
                    yield chunk
                    chunk = RawChunk.empty(needed, Split(offset, lineno + 1, row))
        if row == 0:
            raise self.fail("no data rows")
        if chunk.size:
            yield chunk

    @staticmethod
    def _parse(line: bytes, needed: list[str]) -> tuple[Optional[dict], Optional[str]]:
        line = line.rstrip(b"\r\n")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"invalid UTF-8 (byte 0x{line[e.start]:02x} at byte {e.start + 1})"
        try:
            obj = _DECODER.decode(text)
        except json.JSONDecodeError as e:
            return None, f"invalid JSON: {e.msg} (column {e.colno})"
        if not isinstance(obj, dict):
            return None, f"expected a JSON object, got {type(obj).__name__}"
        if isinstance(obj, _Repeated):
            for c in needed:
                if c in obj.repeated:
                    return None, f"field {show(c, 40)} given more than once: which to read is ambiguous"
        for c in needed:
            if type(obj.get(c)) is _Repeated:  # a nested object, not text: reported as the dict it is
                obj[c] = dict(obj[c])
        for c in needed:
            if c not in obj:
                return None, f"missing field {show(c, 40)} (fields: {show_names(obj, most=8)})"
        return obj, None
