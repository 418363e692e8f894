"""A Hugging Face ``datasets`` dataset saved with ``save_to_disk``: a folder of Arrow IPC stream
files listed in its ``state.json``, read record batch by record batch with pyarrow (memory-mapped:
rows stream, whatever the dataset's size). Reading the files directly, rather than through
``datasets.load_from_disk``, keeps the ``datasets`` package (whose releases that run beside the
transformers version ``adapters`` pins need an older fsspec than the rest of the stack) out of the
install; the layout is the one ``datasets`` 2.x-4.x writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa

from toolkit.common.errors import BadInputError, escape, first_line, show, show_path
from toolkit.sources.base import Reader, native_path
from toolkit.sources.options import SourceOptions
from toolkit.sources.parquet import column_values, nested_not_utf8
from toolkit.sources.records import RawChunk

STATE, DICT = "state.json", "dataset_dict.json"


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and ((path / STATE).is_file() or (path / DICT).is_file())


def _data_files(folder: Path) -> list[Path]:
    if (folder / DICT).is_file() and not (folder / STATE).is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / STATE).is_file())
        raise BadInputError(f"{show_path(folder)}: a DatasetDict; name one of its splits, e.g. "
                            f"{show_path(folder / (splits[0] if splits else 'train'))} "
                            f"(splits: {', '.join(map(show, splits)) or 'none found'})")
    try:
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"{show_path(folder / STATE)}: not a datasets save_to_disk state "
                            f"({first_line(e)})") from None
    for name in names:
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..") \
                or not (folder / name).is_file():
            raise BadInputError(f"{show_path(folder / STATE)}: lists {show(name)}, not a file of this folder")
    files = [folder / name for name in names]
    if not files:
        raise BadInputError(f"{show_path(folder)}: the dataset has no data files")
    return files


class HFDatasetReader(Reader, loc_kind="row", description="Hugging Face datasets folder (save_to_disk)"):
    def __init__(self, path: Path, options: SourceOptions):
        super().__init__(path, options)
        if not path.is_dir():
            raise self.fail("no such folder" if not path.exists() else "expected a datasets save_to_disk folder")
        self.files = _data_files(path)
        self._names = self._names_of(self.files[0], self._open(self.files[0]).schema)

    def _open(self, file: Path) -> pa.RecordBatchStreamReader:
        try:
            return pa.ipc.open_stream(pa.memory_map(native_path(file)))
        except (pa.ArrowException, OSError) as e:
            raise self.fail(f"{escape(file.name)}: not an Arrow stream file ({first_line(e)})") from None

    def _names_of(self, file: Path, schema: pa.Schema) -> list[str]:
        try:
            return list(schema.names)
        except UnicodeDecodeError as e:
            raise self.name_error(e.object, f"{escape(file.name)}: a column name") from None

    @property
    def names(self) -> Optional[list[str]]:
        return self._names

    def raw_chunks(self, needed: list[str], chunk_size: int) -> Iterator[RawChunk]:
        row, pending = 0, []
        for file in self.files:
            stream = self._open(file)
            names = self._names_of(file, stream.schema)
            missing = [c for c in needed if c not in names]
            if missing:
                raise self.fail(f"{escape(file.name)} has no column {show(missing[0])}")
            self.check_needed(needed, names, f"{escape(file.name)}: ")
            try:
                for batch in stream:
                    pending.append(batch.select(needed))
                    while sum(b.num_rows for b in pending) >= chunk_size:
                        table = pa.Table.from_batches(pending)
                        yield self._chunk(table.slice(0, chunk_size), row)
                        row += chunk_size
                        pending = table.slice(chunk_size).to_batches()
            except (pa.ArrowException, OSError) as e:
                raise self.fail(f"{escape(file.name)}: unreadable after row {row} ({first_line(e)})") from None
        rest = pa.Table.from_batches(pending, schema=pending[0].schema) if pending else None
        if rest is not None and rest.num_rows:
            yield self._chunk(rest, row)
        elif row == 0:
            raise self.fail("no data rows")

    def _chunk(self, table: pa.Table, row: int) -> RawChunk:
        n = table.num_rows
        try:
            columns = {c: column_values(table.column(c).combine_chunks()) for c in table.column_names}
        except UnicodeDecodeError as e:
            raise self.fail(f"unreadable after row {row}: {nested_not_utf8(e)}") from None
        chunk = RawChunk(columns=columns, locs=list(range(row + 1, row + n + 1)))
        chunk.rows = chunk.locs
        return chunk
