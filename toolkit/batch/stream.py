"""``toolkit score``: stream a pair file through a bundle (ONNX Runtime) or a run or merged folder
(PyTorch), exactly once.

Work is cut into parts of ``chunk_size`` input records, deterministic for a given file and chunk
size. Each part's scores are written to ``PARTS/part-NNNNN.parquet`` atomically and durably (temp
file, fsync, rename, fsync of the folder) and only then recorded in ``PARTS/manifest.json`` (written
the same way). A run killed at any moment leaves complete parts; started again with the same command
it skips the recorded parts and recomputes the rest, so every row is written once. The manifest also
fingerprints the model, the input and every setting that changes the output: a resume against
anything else is refused, naming what changed, unless ``restart``.
Output to a file: once the parts hold every good row of the input, they are streamed, in order, into
it (temp file, fsync, rename); the manifest then records the output as complete, and only after that
are the parts and the manifest removed. Output to a folder: the parts and manifest are the output.
The crash points (``failpoints.crash_point``) mark the steps between which a test kills the process.

While one part is scored on the main thread, a reader thread reads, validates and tokenises the
next (ONNX Runtime and the Rust tokenizer both release the GIL), so memory stays bounded by a
couple of chunks whatever the file size.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import __version__
from toolkit.common.choices import Provider, Runtime
from toolkit.common.settings_diff import differences, summarize
from toolkit.common.errors import ToolkitError, first_line
from toolkit.common.failpoints import crash_point
from toolkit.common.option_types import Shard
from toolkit.common.atomic_io import atomic_path, fsync_dir, output_lock, read_json, write_json
from toolkit.sources import PairChunk, PairSource, SourceOptions
from toolkit.common.progress import progress_bar

MANIFEST = "manifest.json"
OUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


@dataclass
class ScoreConfig:
    """How to score: parts, batches, threads; the manifest keeps those that change the output."""

    chunk_size: int = 8192  # input records per part (the unit of resumption)
    batch_size: int = 64  # pairs per forward pass
    threads: Optional[int] = None
    """ONNX Runtime / torch threads (default: all cores; --engine ray: per actor, default 1)"""
    shard: Optional[Shard] = None  # score only shard I of N (0-based)
    restart: bool = False  # discard an earlier attempt's parts and start over
    keep_cols: tuple[str, ...] = ()  # input columns to copy into the output
    progress: bool = True  # progress bar with rate and ETA (--quiet: none)
    provider: Provider = "auto"
    """ONNX Runtime provider for a bundle: auto = CPU for int8, CUDA for fp32/fp16 where onnxruntime has it"""
    runtime: Runtime = "auto"
    """what runs a bundle's graph: onnxruntime, openvino (fp32 bundles; the openvino extra), or auto = the fastest
    that passes the bundle's gate on this machine, measured once and remembered (--engine ray: onnxruntime)"""

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
    backend: str = ""  # what scored: provider or device, precision
    timing: dict[str, float] = field(default_factory=dict)
    """seconds per stage: read, tokenise (reader thread, overlapped with inference), waited (main thread
    idle for the reader: the part of reading and tokenising not hidden), pad, run (the engine), write, other
    (the rest of the main thread: loading the model, the manifest, the cosine, assembling the output);
    --engine ray: plan (the driver's read of the input), cluster (the rest), tokenise and run (summed over
    the actors)"""
    spread: dict[str, dict[str, int]] = field(default_factory=dict)
    """--engine ray: pairs scored per node and per actor (by Ray id)"""

    @property
    def rate(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def time_split(self) -> str:
        """Where the wall time went, as one line of shares."""
        if not self.timing or self.seconds <= 0:
            return ""
        shares = ", ".join(f"{k} {100 * v / self.seconds:.0f}%" for k, v in self.timing.items())
        note = " (tokenise, run: summed over actors)" if "plan" in self.timing else \
            " (read and tokenise overlap inference on a reader thread)"
        return f"time: {shares} of {self.seconds:.1f}s{note}"


# -- the model: a bundle (ONNX Runtime), or a run or merged folder (PyTorch) ---------------------------------
class Scorer:
    """``prepare`` (tokenise; reader thread) and ``score`` (inference; main thread), both on the one
    scoring path (scorer.PairScorer) whatever the model."""

    def __init__(self, model_path: str, cfg: ScoreConfig, log=None):
        from toolkit.artifacts.open_model import kind_of, load_model, model_files

        kind = kind_of(model_path)
        if kind != "bundle" and cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        model = load_model(model_path, provider=cfg.provider, threads=cfg.threads, runtime=cfg.runtime,
                           log=log)  # runs: fused kernel on CUDA
        self.predictor = model.predictor(batch_size=cfg.batch_size)
        self.backend = model.describe() if kind == "bundle" else f"pytorch ({self.predictor.device})"
        # what makes the scores what they are: the model's files and where it runs (provider, device);
        # thread counts do not change them
        self.fingerprint = {"kind": kind, "files": model_files(model_path), "runtime": self.backend}

    def prepare(self, chunk: PairChunk):
        return self.predictor.encode(chunk.s1, chunk.s2)

    def score(self, prepared) -> np.ndarray:
        return self.predictor.score_encoded(prepared)

    @property
    def engine_timing(self) -> dict[str, float]:
        """pad / run seconds, where the engine counts them (ONNX Runtime bundles)."""
        return dict(getattr(self.predictor.engine, "timing", {}))


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


def _assemble(parts_dir: Path, parts: list[dict], out: Path, expected: int) -> int:
    """Stream the parts, in order, into ``out`` (temp file, fsync, rename) if together they hold the
    rows the input gave. Returns the count."""
    fmt = _out_format(out)
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


# -- the manifest ------------------------------------------------------------------------------------------
def _input_fingerprint(path: Path) -> dict:
    """Size, modification time and the hash of the first and last MiB: a changed file is caught
    without reading all of it again. A folder (a datasets save_to_disk) is the sum of its files."""
    if path.is_dir():
        files = [_input_fingerprint(f) for f in sorted(path.iterdir()) if f.is_file()]
        digest = hashlib.sha256(json.dumps([[f["path"], f["size"], f["mtime_ns"], f["head_tail_sha256"]]
                                            for f in files]).encode()).hexdigest()
        return {"path": str(path.resolve()), "size": sum(f["size"] for f in files),
                "mtime_ns": max((f["mtime_ns"] for f in files), default=0), "head_tail_sha256": digest}
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
    """Every option that changes the output: which rows (format, columns, score range, bad-row
    policy, --limit), how they are cut into parts and batches (int8's dynamic quantisation depends on
    the batch), which shard, which columns are kept."""
    return {"source": json.loads(json.dumps(asdict(options), default=str)), "chunk_size": cfg.chunk_size,
            "batch_size": cfg.batch_size, "shard": list(cfg.shard) if cfg.shard else None,
            "keep_cols": list(cfg.keep_cols)}


def _remove_parts(parts_dir: Path, pattern: str, keep: frozenset = frozenset()) -> None:
    """Part files (and temp files of interrupted writes) matching ``pattern``, except ``keep``."""
    for path in [*parts_dir.glob(pattern), *parts_dir.glob(f".{pattern}.*.tmp")]:
        if path.name not in keep:
            path.unlink(missing_ok=True)
            crash_point("score.part-removed")
    fsync_dir(parts_dir)


def _open_manifest(job: "_Job", identity: dict, restart: bool) -> dict:
    """The manifest of an earlier attempt with the same identity, or a new one. A new manifest is
    written (atomically, durably) before old parts are removed, and names what is to be removed until
    it is: a crash in between leaves a manifest that names none of the old parts, and the rerun
    finishes the removal. An unsharded restart also removes shards' manifests and parts."""
    if job.manifest.is_file() and not restart:
        manifest = read_json(job.manifest)
        diffs = differences({k: manifest.get(k) for k in identity}, identity)
        if diffs:
            raise ToolkitError(f"{job.parts_dir}: an earlier attempt used other settings, model or input: "
                               f"{summarize(diffs)}; pass --restart to discard its parts and start over")
    else:
        job.parts_dir.mkdir(parents=True, exist_ok=True)
        remove = "*part-*.parquet" if restart and not job.tag else f"{job.tag}part-*.parquet"
        manifest = {"toolkit_version": __version__, **identity, "parts": {}, "complete": False, "removing": remove}
        write_json(job.manifest, manifest)
        crash_point("score.manifest-new")
    if manifest.get("removing"):
        if manifest["removing"].startswith("*"):
            for other in job.parts_dir.glob(f"shard-*-{MANIFEST}"):
                other.unlink()
        recorded = frozenset(p["file"] for p in manifest["parts"].values())
        _remove_parts(job.parts_dir, manifest.pop("removing"), keep=recorded)
        write_json(job.manifest, manifest)
    return manifest


def _verify_parts(job: "_Job", parts: list[dict]) -> None:
    """Every recorded part is there and holds the rows recorded (Parquet metadata: no data read)."""
    for part in parts:
        path = job.parts_dir / part["file"]
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (OSError, pa.ArrowException) as e:
            raise ToolkitError(f"{path}: a recorded part is missing or unreadable ({first_line(e)}); "
                               "pass --restart to score again") from None
        if rows != part["rows"]:
            raise ToolkitError(f"{path}: holds {rows} rows, the manifest recorded {part['rows']}; "
                               "pass --restart to score again")


# -- the job -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start


def _reader(source: PairSource, scorer: Scorer, q: queue.Queue, done_parts: dict, stop: threading.Event,
            shard: Optional[tuple[int, int]], timing: dict[str, float]) -> None:
    """Reader thread: (part index, chunk, prepared) for parts still to do; (index, chunk, None) for
    parts already written; then None. Exceptions travel through the queue. Once ``stop`` is set (the
    main thread is done, perhaps failed, and reads no more) it returns, closing the input: a
    failed call in a long-lived process leaves no thread blocked on the full queue, no file open."""
    chunks = source.chunks(keep_empty=True)
    try:
        for index in itertools.count():
            with _timed(timing, "read"):
                chunk = next(chunks, None)
            if chunk is None or stop.is_set():
                break
            if shard is not None and index % shard[1] != shard[0]:
                continue  # another shard's part
            with _timed(timing, "tokenise"):
                prepared = None if str(index) in done_parts else scorer.prepare(chunk)
            if not _put(q, (index, chunk, prepared), stop):
                return
        _put(q, None, stop)
    except BaseException as e:  # re-raised on the main thread
        _put(q, e, stop)
    finally:
        chunks.close()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first: the queue is bounded, and a main thread that has
    stopped reading would leave a plain ``put`` blocked for ever."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@dataclass
class _Job:
    """Where one ``score_file`` call writes: the output, its parts folder and their names."""

    out: Path
    to_dir: bool
    parts_dir: Path
    tag: str  # shard prefix of part and manifest names in a shared output folder

    @classmethod
    def plan(cls, out: str, shard: Optional[tuple[int, int]]) -> "_Job":
        out_path = Path(out)
        to_dir = out.endswith((os.sep, "/")) or out_path.is_dir() or not out_path.suffix
        if not to_dir and _out_format(out_path) is None:
            raise ToolkitError(f"{out}: unknown output format {out_path.suffix!r} "
                               "(use .parquet, .csv, .tsv or .jsonl, or a folder/)")
        parts_dir = out_path if to_dir else out_path.with_name(out_path.name + ".parts")
        tag = f"shard-{shard[0]:03d}-of-{shard[1]:03d}-" if (shard and to_dir) else ""
        return cls(out_path, to_dir, parts_dir, tag)

    @property
    def manifest(self) -> Path:
        return self.parts_dir / f"{self.tag}{MANIFEST}"


def score_file(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig,
               log: Optional[Callable[[str], None]] = None) -> ScoreSummary:
    """Score every pair of ``input_path`` into ``out`` (a file: .parquet/.csv/.tsv/.jsonl, or a folder);
    ``log`` hears which engine serves a bundle and why (``--runtime auto``)."""
    cfg.validate()
    start = time.time()
    job = _Job.plan(out, cfg.shard)
    with output_lock(job.out, job.tag):  # before anything of the output is read: one job per output
        return _score_job(model_path, input_path, out, options, cfg, job, start, log)


def _score_job(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig, job: _Job,
               start: float, log: Optional[Callable[[str], None]]) -> ScoreSummary:
    """``score_file``'s work, run while this job holds the output."""
    # shards take whole parts (part k -> shard k % n): each part is batched exactly as unsharded,
    # so the union of the shards is the unsharded output, scores included (int8's dynamic
    # quantisation depends on the batch)
    options = dataclasses.replace(options, need_score=False, chunk_size=cfg.chunk_size,
                                  keep_cols=tuple(cfg.keep_cols))
    source = PairSource(input_path, options)
    if not job.to_dir and job.out.is_file() and not job.manifest.is_file() and not cfg.restart:
        raise ToolkitError(f"{out}: already exists (a finished output); pass --restart to score it again")
    scorer = Scorer(model_path, cfg, log)
    identity = {"model": scorer.fingerprint, "input": _input_fingerprint(Path(input_path)),
                "settings": _settings(options, cfg)}
    manifest = _open_manifest(job, identity, cfg.restart)
    summary = ScoreSummary(output=str(job.out), backend=scorer.backend)
    if manifest.get("complete"):  # an earlier attempt published the output; at most its cleanup was cut short
        if not job.to_dir and not job.out.is_file():
            raise ToolkitError(f"{out}: was removed after scoring finished; pass --restart to score again")
        summary.written = manifest["written"]
        if not job.to_dir:
            _clean_up(job, manifest)
        summary.seconds = time.time() - start
        return summary
    summary.resumed_parts = len(manifest["parts"])
    owned = _score_parts(job, source, scorer, manifest, cfg, _count_rows(Path(input_path), source, cfg.shard),
                         summary)
    summary.rows, summary.bad = source.report.rows, source.report.bad
    summary.skipped_report = list(source.report.problems)
    done = manifest["parts"]
    parts = [done[str(i)] for i in owned]
    expected = sum(owned.values())
    if cfg.shard is None and expected != summary.rows - summary.bad:
        raise ToolkitError(f"{input_path}: read {summary.rows} rows with {summary.bad} bad, but the parts cover "
                           f"{expected}; not published")
    if set(done) != {str(i) for i in owned}:
        raise ToolkitError(f"{job.manifest}: records other parts than this input gives; pass --restart")
    _verify_parts(job, parts)
    if job.to_dir:
        _remove_parts(job.parts_dir, f"{job.tag}part-*.parquet", keep=frozenset(p["file"] for p in parts))
        summary.written = expected
    else:
        summary.written = _assemble(job.parts_dir, parts, job.out, expected)
        crash_point("score.output-renamed")
    manifest.update(complete=True, rows=summary.rows, bad=summary.bad, written=summary.written,
                    files=[p["file"] for p in parts])
    write_json(job.manifest, manifest)
    crash_point("score.manifest-complete")
    if not job.to_dir:
        _clean_up(job, manifest)
    summary.seconds = time.time() - start
    main_thread = sum(summary.timing.get(k, 0.0) for k in ("waited", "pad", "run", "write"))
    summary.timing["other"] = max(summary.seconds - main_thread, 0.0)
    return summary


def _score_parts(job: _Job, source: PairSource, scorer: Scorer, manifest: dict, cfg: ScoreConfig,
                 total: Optional[int], summary: ScoreSummary) -> dict[int, int]:
    """Score the parts not yet in the manifest; returns {part index: good rows} of every part this
    job owns. A part is written (temp file, fsync, rename) before the manifest records it."""
    done = manifest["parts"]
    owned: dict[int, int] = {}
    bar = progress_bar(total=total, unit="pair", unit_scale=True, disable=not cfg.progress, desc="scoring")
    q: queue.Queue = queue.Queue(maxsize=2)  # bounded: the reader runs at most two chunks ahead
    stop = threading.Event()
    timing = summary.timing
    thread = threading.Thread(target=_reader, args=(source, scorer, q, done, stop, cfg.shard, timing), daemon=True)
    thread.start()
    waited = 0.0
    try:
        while True:
            t = time.perf_counter()
            item = q.get()
            waited += time.perf_counter() - t
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            index, chunk, prepared = item
            owned[index] = len(chunk)
            name = f"{job.tag}part-{index:05d}.parquet"
            if prepared is not None:
                scores = scorer.score(prepared)
                with _timed(timing, "write"):
                    with atomic_path(job.parts_dir / name) as tmp:
                        pq.write_table(part_table(chunk, scores, cfg.keep_cols), tmp)
                        crash_point("score.part-written")
                    crash_point("score.part-renamed")
                    done[str(index)] = {"file": name, "rows": len(chunk)}
                    write_json(job.manifest, manifest)
                crash_point("score.manifest-updated")
            elif done[str(index)]["rows"] != len(chunk):
                raise ToolkitError(f"{job.manifest}: part {index} recorded {done[str(index)]['rows']} rows, the "
                                   f"input gives {len(chunk)}; pass --restart")
            bar.update(len(chunk))
    finally:
        stop.set()
        thread.join()  # it sees ``stop`` within 0.1 s, or once it has read and tokenised the part in hand
        bar.close()
        timing.update(waited=waited, **scorer.engine_timing)
    return owned


def _clean_up(job: _Job, manifest: dict) -> None:
    """After the output is published and the manifest says so: remove the parts, then the manifest."""
    for name in manifest["files"]:
        (job.parts_dir / name).unlink(missing_ok=True)
        crash_point("score.cleanup.part")
    _remove_parts(job.parts_dir, f"{job.tag}part-*.parquet")
    job.manifest.unlink(missing_ok=True)
    # temp files that crashed writes of the manifest or the output left behind
    for stale in [*job.parts_dir.glob(f".{job.manifest.name}.*.tmp"), *job.out.parent.glob(f".{job.out.name}.*.tmp")]:
        stale.unlink(missing_ok=True)
    if not any(job.parts_dir.iterdir()):
        job.parts_dir.rmdir()


def _count_rows(path: Path, source: PairSource, shard) -> Optional[int]:
    """Records to expect (for the ETA), where cheap: Parquet metadata, or newlines of a text file."""
    from toolkit.sources.delimited import DelimitedReader
    from toolkit.sources.jsonl import JsonlReader
    from toolkit.sources.parquet import ParquetReader

    try:
        if isinstance(source.reader, ParquetReader):
            n = source.reader.file.metadata.num_rows  # the reader's open file: pyarrow takes paths as UTF-8 only
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
