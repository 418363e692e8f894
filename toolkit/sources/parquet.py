"""Parquet, read batch by batch with pyarrow; only the needed columns are decoded."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.common.errors import first_line, show
from toolkit.sources.base import Reader, native_path, require_file
from toolkit.sources.options import SourceOptions
from toolkit.sources.records import RawChunk, Split


class ParquetReader(Reader, loc_kind="row", splittable=True, description="Parquet"):
    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        require_file(path)
        if path.stat().st_size == 0:
            raise self.fail("empty file")
        try:
            self.file = pq.ParquetFile(pa.OSFile(native_path(path)))
            self._names = list(self.file.schema_arrow.names)
        except UnicodeDecodeError as e:  # pyarrow decodes every column and nested field name on opening
            raise self.name_error(e.object, "a column or field name") from None
        except (pa.ArrowException, OSError) as e:
            raise self.fail(f"not a readable Parquet file ({first_line(e)})") from None

    @property
    def names(self) -> Optional[list[str]]:
        return self._names

    def raw_chunks(self, needed: list[str], chunk_size: int, start: Optional[Split] = None) -> Iterator[RawChunk]:
        self.check_needed(needed)
        if self.file.metadata.num_rows == 0:
            raise self.fail("no data rows")
        row = start.offset if start else 0
        try:
            for batch in self._batches(needed, chunk_size, row):
                n = batch.num_rows
                chunk = RawChunk(
                    columns={c: column_values(batch.column(c)) for c in needed},
                    locs=list(range(row + 1, row + n + 1)), start=Split(row, row + 1, row),
                )
                chunk.rows = chunk.locs
                row += n
                yield chunk
        except (pa.ArrowException, OSError) as e:
            raise self.fail(f"unreadable after row {row} ({first_line(e)})") from None
        except UnicodeDecodeError as e:
            raise self.fail(f"unreadable after row {row}: {nested_not_utf8(e)}") from None

    def _batches(self, needed: list[str], chunk_size: int, first: int) -> Iterator[pa.RecordBatch]:
        """The file in batches, or (``first`` > 0) the one batch of ``chunk_size`` rows from row
        ``first``, decoding only the row groups it spans."""
        if first == 0:
            yield from self.file.iter_batches(batch_size=chunk_size, columns=needed)
            return
        meta, low, groups, skip = self.file.metadata, 0, [], 0
        for group in range(meta.num_row_groups):
            n = meta.row_group(group).num_rows
            if low + n > first and low < first + chunk_size:
                skip = skip if groups else first - low
                groups.append(group)
            low += n
        if groups:
            table = self.file.read_row_groups(groups, columns=needed).slice(skip, chunk_size).combine_chunks()
            yield from table.to_batches()[:1]


def column_values(column: pa.Array) -> list:
    """Python values of a column. A string column holding bytes that are not UTF-8 (Parquet does not
    check) gives text with those bytes kept as lone surrogates (surrogateescape, as the text formats
    do), reported on their row instead of failing the read. Such bytes inside a nested column (a
    value, or a struct's field name) raise UnicodeDecodeError: ``nested_not_utf8`` says it."""
    try:
        return column.to_pylist()
    except UnicodeDecodeError:
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        binary = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary(),
                  pa.string_view(): pa.binary_view()}.get(column.type)
        if binary is None:
            raise
        return [None if v is None else v.decode("utf-8", "surrogateescape") for v in column.view(binary).to_pylist()]


def nested_not_utf8(e: UnicodeDecodeError) -> str:
    """What ``column_values`` could not decode in a nested column, for a message."""
    return f"a nested value or field name is not valid UTF-8: {show(bytes(e.object), 60)}"
