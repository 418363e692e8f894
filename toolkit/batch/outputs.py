"""Score outputs: a part as an Arrow table, and the parts streamed, in order, into one output file
(Parquet, CSV, TSV or JSON Lines; temp file, fsync, rename)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.common.atomic_io import atomic_path
from toolkit.common.errors import ToolkitError
from toolkit.common.failpoints import crash_point
from toolkit.sources import PairChunk

OUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


def out_format(path: Path) -> Optional[str]:
    return OUT_FORMATS.get(path.suffix.lower())


def part_table(chunk: PairChunk, scores: np.ndarray, keep_cols: tuple[str, ...]) -> pa.Table:
    columns = {"id": pa.array(chunk.ids, pa.string()), "score": pa.array(scores, pa.float64())}
    for name in keep_cols:
        columns[name] = pa.array(chunk.extra[name], pa.string())
    return pa.table(columns)


def _append(table: pa.Table, fmt: str, handle, writer_box: list) -> None:
    if fmt == "parquet":
        if not writer_box:
            writer_box.append(pq.ParquetWriter(handle, table.schema))
        writer_box[0].write_table(table)
    elif fmt in ("csv", "tsv"):
        w = csv.writer(handle, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        if not writer_box:
            w.writerow(table.column_names)
            writer_box.append(True)
        cols = [table.column(n).to_pylist() for n in table.column_names]
        for row in zip(*cols):
            w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    else:
        names = table.column_names
        cols = [table.column(n).to_pylist() for n in names]
        for row in zip(*cols):
            handle.write(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n")


def assemble(parts_dir: Path, parts: list[dict], out: Path, expected: int) -> int:
    """Stream the parts, in order, into ``out`` (temp file, fsync, rename) if together they hold the
    rows the input gave. Returns the count."""
    fmt = out_format(out)
    rows = 0
    with atomic_path(out) as tmp:
        mode = "wb" if fmt == "parquet" else "w"
        with open(tmp, mode, **({} if fmt == "parquet" else {"encoding": "utf-8", "newline": ""})) as handle:
            box: list = []
            for part in parts:
                table = pq.read_table(parts_dir / part["file"])
                rows += table.num_rows
                _append(table, fmt, handle, box)
                crash_point("score.assemble.part")
            if fmt == "parquet" and box:
                box[0].close()
            elif fmt == "parquet":  # no rows at all: still a valid, empty file
                pq.write_table(pa.table({"id": pa.array([], pa.string()), "score": pa.array([], pa.float64())}),
                               handle)
        if rows != expected:
            raise ToolkitError(f"{out}: the parts hold {rows} rows, the input gave {expected} good ones; "
                               "not published (pass --restart to score again)")
    return rows
