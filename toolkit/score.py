"""``toolkit score``: stream a pair file through a bundle (ONNX Runtime) or a run (PyTorch), exactly once.

Work is cut into parts of ``chunk_size`` input records, deterministic for a given file and chunk
size. Each part's scores are written to ``PARTS/part-NNNNN.parquet`` atomically (temp file, rename)
and only then recorded in ``PARTS/manifest.json`` (also rewritten atomically). A run killed at any
moment leaves complete parts; started again with the same command it skips the recorded parts and
recomputes the rest, so every row is written once. The manifest also fingerprints the model, the
input and the settings: a resume against anything else is refused unless ``restart``.
Output to a file: the parts are finally streamed, in order, into it (again temp file + rename) and
the parts folder removed. Output to a folder: the parts and manifest are the output.

While one part is scored on the main thread, a reader thread reads, validates and tokenises the
next (ONNX Runtime and the Rust tokenizer both release the GIL), so memory stays bounded by a
couple of chunks whatever the file size.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from . import __version__
from .errors import ToolkitError
from .io_utils import atomic_path, read_json, write_json
from .sources import PairChunk, PairSource, SourceOptions

MANIFEST = "manifest.json"
OUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


@dataclass
class ScoreConfig:
    chunk_size: int = 8192  # input records per part
    batch_size: int = 64
    threads: Optional[int] = None  # ONNX Runtime intra-op threads (torch: torch.set_num_threads)
    shard: Optional[tuple[int, int]] = None  # (i, n), 0-based
    restart: bool = False
    keep_cols: tuple[str, ...] = ()
    progress: bool = True

    def validate(self) -> None:
        if self.chunk_size < 1 or self.batch_size < 1:
            raise ToolkitError("--chunk-size and --batch-size must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ToolkitError("--threads must be at least 1")


@dataclass
class ScoreSummary:
    rows: int = 0
    bad: int = 0
    written: int = 0
    resumed_parts: int = 0
    seconds: float = 0.0
    output: str = ""
    skipped_report: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


# -- the model: a bundle (ONNX Runtime) or a run directory (PyTorch) --------------------------------------
class Scorer:
    """``prepare`` (tokenise; reader thread) and ``score`` (inference; main thread)."""

    def __init__(self, model_path: str, cfg: ScoreConfig):
        from .bundle import METADATA, Bundle, sha256_file

        path = Path(model_path)
        if (path / METADATA).is_file():
            self.bundle = Bundle.load(path, threads=cfg.threads)
            self.bundle.predictor(batch_size=cfg.batch_size)
            meta = self.bundle.metadata
            self.fingerprint = {"kind": "bundle", "files": meta["files"]}
            self.backend = f"onnxruntime ({self.bundle.session.get_providers()[0]}, {meta['variant']})"
        else:
            import torch

            from .run import CONFIG, WEIGHTS_DIR, load_run

            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            self.bundle = None
            run = load_run(path)  # the fused kernel where CUDA and Triton are
            self.predictor = run.predictor(batch_size=cfg.batch_size)
            weights = sorted((path / WEIGHTS_DIR).glob("*"))
            self.fingerprint = {"kind": "run", "config": sha256_file(path / CONFIG),
                                "weights": {w.name: sha256_file(w) for w in weights if w.is_file()}}
            self.backend = f"pytorch ({self.predictor.device})"

    def prepare(self, chunk: PairChunk):
        if self.bundle is not None:
            return self.bundle.encode(chunk.s1, chunk.s2)
        return chunk

    def score(self, prepared) -> np.ndarray:
        if self.bundle is not None:
            return self.bundle.score_encoded(prepared)
        return self.predictor.predict(prepared.s1, prepared.s2)


# -- output ------------------------------------------------------------------------------------------------
def _out_format(path: Path) -> Optional[str]:
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


def _assemble(parts_dir: Path, parts: list[str], out: Path) -> int:
    """Stream the parts, in order, into ``out`` (temp file, then rename). Returns the row count."""
    fmt = _out_format(out)
    rows = 0
    with atomic_path(out) as tmp:
        mode = "wb" if fmt == "parquet" else "w"
        with open(tmp, mode, **({} if fmt == "parquet" else {"encoding": "utf-8", "newline": ""})) as handle:
            box: list = []
            for name in parts:
                table = pq.read_table(parts_dir / name)
                rows += table.num_rows
                _append(table, fmt, handle, box)
            if fmt == "parquet" and box:
                box[0].close()
            elif fmt == "parquet":  # no rows at all: still a valid, empty file
                pq.write_table(pa.table({"id": pa.array([], pa.string()), "score": pa.array([], pa.float64())}),
                               handle)
    return rows


# -- the manifest ------------------------------------------------------------------------------------------
def _input_fingerprint(path: Path) -> dict:
    """Size, modification time and the hash of the first and last MiB: a changed file is caught
    without reading all of it again."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "head_tail_sha256": h.hexdigest()}


def _settings(options: SourceOptions, cfg: ScoreConfig) -> dict:
    opts = asdict(options)
    opts.pop("limit", None)
    return {"source": json.loads(json.dumps(opts, default=str)), "chunk_size": cfg.chunk_size,
            "shard": list(cfg.shard) if cfg.shard else None, "keep_cols": list(cfg.keep_cols)}


def _open_manifest(parts_dir: Path, name: str, identity: dict, restart: bool, tag: str) -> dict:
    path = parts_dir / name
    if path.is_file() and not restart:
        manifest = read_json(path)
        for key in ("model", "input", "settings"):
            if manifest.get(key) != identity[key]:
                what = {"model": "model", "input": "input file (or one since changed)",
                        "settings": "set of scoring settings"}[key]
                raise ToolkitError(f"{parts_dir}: an earlier attempt used another {what}; "
                                   "pass --restart to discard its parts and start over")
        return manifest
    if parts_dir.exists():
        for old in parts_dir.glob(f"{tag}part-*.parquet"):
            old.unlink()
    parts_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"toolkit_version": __version__, **identity, "parts": {}, "complete": False}
    write_json(path, manifest)
    return manifest


# -- the job -----------------------------------------------------------------------------------------------
def _reader(source: PairSource, scorer: Scorer, q: queue.Queue, done_parts: dict, stop: threading.Event,
            shard: Optional[tuple[int, int]]) -> None:
    """Reader thread: (part index, chunk, prepared) for parts still to do; (index, chunk, None) for
    parts already written; then None. Exceptions travel through the queue."""
    try:
        for index, chunk in enumerate(source.chunks(keep_empty=True)):
            if stop.is_set():
                return
            if shard is not None and index % shard[1] != shard[0]:
                continue  # another shard's part
            prepared = None if str(index) in done_parts else scorer.prepare(chunk)
            q.put((index, chunk, prepared))
        q.put(None)
    except BaseException as e:  # re-raised on the main thread
        q.put(e)


def score_file(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig) -> ScoreSummary:
    """Score every pair of ``input_path`` into ``out`` (a file: .parquet/.csv/.tsv/.jsonl, or a folder)."""
    cfg.validate()
    start = time.time()
    out_path = Path(out)
    to_dir = out.endswith((os.sep, "/")) or out_path.is_dir() or not out_path.suffix
    if not to_dir and _out_format(out_path) is None:
        raise ToolkitError(f"{out}: unknown output format {out_path.suffix!r} "
                           "(use .parquet, .csv, .tsv or .jsonl, or a folder/)")
    parts_dir = out_path if to_dir else out_path.with_name(out_path.name + ".parts")
    # shards take whole parts (part k -> shard k % n): each part is batched exactly as unsharded,
    # so the union of the shards is the unsharded output, scores included (int8's dynamic
    # quantisation depends on the batch)
    shard_tag = f"shard-{cfg.shard[0]:03d}-of-{cfg.shard[1]:03d}-" if (cfg.shard and to_dir) else ""
    options = dataclasses.replace(options, need_score=False, chunk_size=cfg.chunk_size,
                                  keep_cols=tuple(cfg.keep_cols))
    source = PairSource(input_path, options)
    if not to_dir and out_path.is_file() and not any(parts_dir.glob(f"*{MANIFEST}")) and not cfg.restart:
        raise ToolkitError(f"{out}: already exists (a finished output); pass --restart to score it again")
    scorer = Scorer(model_path, cfg)
    identity = {"model": scorer.fingerprint, "input": _input_fingerprint(Path(input_path)),
                "settings": _settings(options, cfg)}
    manifest_name = f"{shard_tag}{MANIFEST}"
    manifest = _open_manifest(parts_dir, manifest_name, identity, cfg.restart, shard_tag)
    summary = ScoreSummary(output=str(out_path))
    if manifest.get("complete"):
        summary.written = sum(p["rows"] for p in manifest["parts"].values())
        summary.seconds = time.time() - start
        return summary
    done = manifest["parts"]
    summary.resumed_parts = len(done)

    total = _count_rows(Path(input_path), source, cfg.shard)
    bar = tqdm(total=total, unit="pair", unit_scale=True, disable=not cfg.progress, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, desc="scoring")
    q: queue.Queue = queue.Queue(maxsize=2)  # bounded: the reader runs at most two chunks ahead
    stop = threading.Event()
    thread = threading.Thread(target=_reader, args=(source, scorer, q, done, stop, cfg.shard), daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            index, chunk, prepared = item
            name = f"{shard_tag}part-{index:05d}.parquet"
            if prepared is not None:
                scores = scorer.score(prepared)
                with atomic_path(parts_dir / name) as tmp:
                    pq.write_table(part_table(chunk, scores, cfg.keep_cols), tmp)
                done[str(index)] = {"file": name, "rows": len(chunk)}
                manifest["parts"] = done
                write_json(parts_dir / manifest_name, manifest)
            bar.update(len(chunk))
    finally:
        stop.set()
        bar.close()
    summary.rows, summary.bad = source.report.rows, source.report.bad
    summary.skipped_report = list(source.report.problems)
    order = [done[k]["file"] for k in sorted(done, key=int)]
    if to_dir:
        summary.written = sum(p["rows"] for p in done.values())
        manifest.update(complete=True, rows=summary.rows, bad=summary.bad, files=order)
        write_json(parts_dir / manifest_name, manifest)
    else:
        summary.written = _assemble(parts_dir, order, out_path)
        for name in order:
            (parts_dir / name).unlink(missing_ok=True)
        (parts_dir / manifest_name).unlink(missing_ok=True)
        if not any(parts_dir.iterdir()):
            parts_dir.rmdir()
    summary.seconds = time.time() - start
    return summary


def _count_rows(path: Path, source: PairSource, shard) -> Optional[int]:
    """Records to expect (for the ETA), where cheap: Parquet metadata, or newlines of a text file."""
    from .sources.delimited import DelimitedReader
    from .sources.jsonl import JsonlReader
    from .sources.parquet import ParquetReader

    try:
        if isinstance(source.reader, ParquetReader):
            n = pq.ParquetFile(path).metadata.num_rows
        elif isinstance(source.reader, (DelimitedReader, JsonlReader)):
            n = 0
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    n += block.count(b"\n")
        else:
            return None
    except OSError:
        return None
    return n // shard[1] if shard else n
