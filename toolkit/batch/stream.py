"""``toolkit score``: stream a pair file through a bundle (ONNX Runtime or OpenVINO) or a run or merged
folder (PyTorch), exactly once (the protocol: manifest.py).

While one part is scored on the main thread, a reader thread reads, validates and tokenises the
next (ONNX Runtime and the Rust tokenizer both release the GIL), so memory stays bounded by a
couple of chunks whatever the file size.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow.parquet as pq

from toolkit.batch.config import ScoreConfig, ScoreSummary
from toolkit.batch.manifest import (
    Job,
    clean_up,
    input_fingerprint,
    open_manifest,
    output_settings,
    remove_parts,
    verify_parts,
)
from toolkit.batch.outputs import assemble, part_table
from toolkit.common.atomic_io import atomic_path, output_lock, write_json
from toolkit.common.errors import ToolkitError
from toolkit.common.failpoints import crash_point
from toolkit.common.progress import progress_bar
from toolkit.sources import PairChunk, PairSource, SourceOptions


class FileScorer:
    """``prepare`` (tokenise; reader thread) and ``score`` (inference; main thread), both on the one
    scoring path (pair_scorer.PairScorer) whatever the model."""

    def __init__(self, model_path: str, cfg: ScoreConfig, say=None):
        from toolkit.artifacts.open_model import kind_of, load_model, model_files

        kind = kind_of(model_path)
        if kind != "bundle" and cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        model = load_model(model_path, provider=cfg.provider, threads=cfg.threads, runtime=cfg.runtime,
                           say=say)  # runs: fused kernel on CUDA
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


@contextlib.contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timing[key] = timing.get(key, 0.0) + time.perf_counter() - start


def _reader(source: PairSource, scorer: FileScorer, q: queue.Queue, done_parts: dict, stop: threading.Event,
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


def score_file(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig,
               say: Optional[Callable[[str], None]] = None) -> ScoreSummary:
    """Score every pair of ``input_path`` into ``out`` (a file: .parquet/.csv/.tsv/.jsonl, or a folder);
    ``say`` hears which engine serves a bundle and why (``--runtime auto``)."""
    cfg.validate()
    start = time.time()
    job = Job.plan(out, cfg.shard)
    with output_lock(job.out, job.tag):  # before anything of the output is read: one job per output
        return _score_job(model_path, input_path, out, options, cfg, job, start, say)


def _score_job(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig, job: Job,
               start: float, say: Optional[Callable[[str], None]]) -> ScoreSummary:
    """``score_file``'s work, run while this job holds the output."""
    # shards take whole parts (part k -> shard k % n): each part is batched exactly as unsharded,
    # so the union of the shards is the unsharded output, scores included (int8's dynamic
    # quantisation depends on the batch)
    options = dataclasses.replace(options, need_score=False, chunk_size=cfg.chunk_size,
                                  keep_cols=tuple(cfg.keep_cols))
    source = PairSource(input_path, options)
    if not job.to_dir and job.out.is_file() and not job.manifest.is_file() and not cfg.restart:
        raise ToolkitError(f"{out}: already exists (a finished output); pass --restart to score it again")
    scorer = FileScorer(model_path, cfg, say)
    identity = {"model": scorer.fingerprint, "input": input_fingerprint(Path(input_path)),
                "settings": output_settings(options, cfg)}
    manifest = open_manifest(job, identity, cfg.restart)
    summary = ScoreSummary(output=str(job.out), backend=scorer.backend)
    if manifest.get("complete"):  # an earlier attempt published the output; at most its cleanup was cut short
        if not job.to_dir and not job.out.is_file():
            raise ToolkitError(f"{out}: was removed after scoring finished; pass --restart to score again")
        summary.written = manifest["written"]
        if not job.to_dir:
            clean_up(job, manifest)
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
    verify_parts(job, parts)
    if job.to_dir:
        remove_parts(job.parts_dir, f"{job.tag}part-*.parquet", keep=frozenset(p["file"] for p in parts))
        summary.written = expected
    else:
        summary.written = assemble(job.parts_dir, parts, job.out, expected)
        crash_point("score.output-renamed")
    manifest.update(complete=True, rows=summary.rows, bad=summary.bad, written=summary.written,
                    files=[p["file"] for p in parts])
    write_json(job.manifest, manifest)
    crash_point("score.manifest-complete")
    if not job.to_dir:
        clean_up(job, manifest)
    summary.seconds = time.time() - start
    main_thread = sum(summary.timing.get(k, 0.0) for k in ("waited", "pad", "run", "write"))
    summary.timing["other"] = max(summary.seconds - main_thread, 0.0)
    return summary


def _score_parts(job: Job, source: PairSource, scorer: FileScorer, manifest: dict, cfg: ScoreConfig,
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
