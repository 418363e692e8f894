"""Parquet, read batch by batch with pyarrow; only the needed columns are decoded."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .base import Reader, require_file
from .options import SourceOptions
from .records import RawChunk


class ParquetReader(Reader):
    loc_kind = "row"
    description = "Parquet"

    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        require_file(path)
        if path.stat().st_size == 0:
            raise self.fail("empty file")
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise self.fail(f"not a readable Parquet file ({_first_line(e)})") from None

    @property
    def names(self) -> Optional[list[str]]:
        return list(self.file.schema_arrow.names)

    def raw_chunks(self, needed: list[str], chunk_size: int) -> Iterator[RawChunk]:
        if self.file.metadata.num_rows == 0:
            raise self.fail("no data rows")
        row = 0
        try:
            for batch in self.file.iter_batches(batch_size=chunk_size, columns=needed):
                n = batch.num_rows
                chunk = RawChunk(
                    columns={c: batch.column(c).to_pylist() for c in needed},
                    locs=list(range(row + 1, row + n + 1)),
                )
                chunk.rows = chunk.locs
                row += n
                yield chunk
        except (pa.ArrowException, OSError) as e:
            raise self.fail(f"unreadable after row {row} ({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
