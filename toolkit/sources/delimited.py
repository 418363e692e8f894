"""CSV and TSV files with a header, and the STS Benchmark release (no header, 7+ fields)."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Iterator, Optional

from toolkit.common.errors import BadInputError, escape, show, show_names
from toolkit.sources.base import UTF8_BOM, Reader, sniff_text
from toolkit.sources.options import SourceOptions
from toolkit.sources.records import RawChunk, Split

# The STS-B release: genre, filename, year, id, score, sentence1, sentence2, then on some lines
# source attributions as extra fields; text holds bare double quotes, so quoting must be off.
STSB_FIELDS = ["genre", "filename", "year", "id", "score", "sentence1", "sentence2"]

csv.field_size_limit(min(sys.maxsize, 1 << 24))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def looks_like_stsb(first_line: str) -> bool:
    fields = first_line.split("\t")
    return len(fields) >= len(STSB_FIELDS) and _is_number(fields[4])


class DelimitedReader(Reader, loc_kind="line", splittable=True):
    """Comma- or tab-separated text; the layout is read off the first record.

    Lines are decoded with ``surrogateescape`` so that invalid UTF-8 turns up in the values of the
    row that holds it (and is reported there) instead of aborting the whole read.
    """

    def __init__(self, path: Path, options: SourceOptions, fmt: str):
        super().__init__(path, options)
        head = sniff_text(path).decode("utf-8", errors="surrogateescape")
        with open(path, "rb") as f:
            self._bom = f.read(len(UTF8_BOM)) == UTF8_BOM
        # Lines end at CR or LF only, as csv reads them: splitlines() would also end one at a form feed,
        # U+2028 or the like inside a header name, and hide the tabs after it from the sniff.
        first_line = head.split("\n", 1)[0].split("\r", 1)[0]
        if fmt in ("tsv", "stsb"):
            self.delimiter = "\t"
        else:
            self.delimiter = "\t" if "\t" in first_line else ","
        cols = options.columns
        header = next(csv.reader([first_line], delimiter=self.delimiter), [])
        header = [h.strip() for h in header]
        if fmt == "stsb" or (
            cols.s1_col not in header and self.delimiter == "\t" and looks_like_stsb(first_line)
        ):
            self.layout = "stsb"
            self.has_header = False
            self._names = list(STSB_FIELDS)
            self.quoting = csv.QUOTE_NONE if options.quoting in ("auto", "none") else csv.QUOTE_MINIMAL
            self.description = "STS-B release layout (tab-separated, no header)"
        else:
            self.has_header = True
            self.quoting = csv.QUOTE_NONE if options.quoting == "none" else csv.QUOTE_MINIMAL
            self._names = self._read_header()
            sep = "tab" if self.delimiter == "\t" else "comma"
            self.description = f"{sep}-separated with header ({len(self._names)} columns)"

    def _open(self, offset: int = 0):
        f = open(self.path, "rb")
        f.seek(offset)
        return io.TextIOWrapper(f, encoding="utf-8-sig" if offset == 0 else "utf-8", errors="surrogateescape",
                                newline="")

    def _counted(self, f, offset: int) -> Iterator[str]:
        """The lines of ``f``, keeping ``self.offset`` at the byte after the last one handed out: a text
        file's tell() is off while csv iterates it. Re-encoding gives each line's bytes exactly
        (surrogateescape round-trips every byte; newline="" keeps line ends as they are)."""
        if offset == 0 and self._bom:
            offset = len(UTF8_BOM)
        self.offset = offset
        for line in f:
            self.offset += len(line.encode("utf-8", "surrogateescape"))
            yield line

    def _reader(self, f):
        return csv.reader(f, delimiter=self.delimiter, quoting=self.quoting,
                          strict=self.quoting != csv.QUOTE_NONE)

    def _read_header(self) -> list[str]:
        with self._open() as f:
            try:
                header = next(self._reader(f))
            except (csv.Error, StopIteration) as e:
                raise self.fail(f"unreadable header: {escape(str(e))}", 1) from None
        names = [h.strip() for h in header]
        seen = set()
        for name in names:
            if name in seen:
                raise self.fail(f"duplicate column {show(name, 40)} in the header", 1)
            seen.add(name)
        return names

    @property
    def names(self) -> Optional[list[str]]:
        return self._names

    def missing_column_error(self, name: str) -> BadInputError:
        return self.fail(f"no column {show(name, 40)} in the header (columns: {show_names(self._names)})", 1)

    def raw_chunks(self, needed: list[str], chunk_size: int, start: Optional[Split] = None) -> Iterator[RawChunk]:
        start = start or Split()
        index = [self._names.index(c) for c in needed]
        chunk = RawChunk.empty(needed, start)
        row = start.row
        with self._open(start.offset) as f:
            reader = self._reader(self._counted(f, start.offset))
            base = prev_line = start.line - 1
            header_pending = self.has_header and start.offset == 0
            while True:
                try:
                    record = next(reader)
                    error = None
                except StopIteration:
                    break
                except csv.Error as e:
                    record, error = None, str(e)
                first, prev_line = prev_line + 1, base + reader.line_num
                if record is not None and (not record or record == [""]):
                    continue  # a blank line is not a row
                if header_pending:
                    header_pending = False
                    continue
                row += 1
                chunk.add_record(first, row, self._record_problem(record, error), record, index)
                if chunk.size >= chunk_size:
                    yield chunk
                    chunk = RawChunk.empty(needed, Split(self.offset, prev_line + 1, row))
        if row == 0:
            raise self.fail("header only, no data rows" if self.has_header else "no data rows")
        if chunk.size:
            yield chunk

    def _record_problem(self, record: Optional[list[str]], error: Optional[str]) -> Optional[str]:
        if error is not None:
            hint = "" if self.quoting == csv.QUOTE_NONE else \
                " (an unbalanced quote? --quoting none reads quotes as text)"
            return f"malformed {'TSV' if self.delimiter == chr(9) else 'CSV'}: {escape(error)}{hint}"
        if self.layout == "stsb":
            if len(record) < len(STSB_FIELDS):
                return f"too few fields: {len(record)}, the STS-B layout has {len(STSB_FIELDS)}"
            return None
        if len(record) != len(self._names):
            few = "few" if len(record) < len(self._names) else "many"
            return f"too {few} fields: {len(record)}, the header has {len(self._names)}"
        return None
