"""``toolkit score --engine ray``: the local engine's scoring, run by Ray Data on a cluster.

Read: a Ray Data datasource over the toolkit's own pair readers, one read task per file, each
yielding the local engine's parts (``chunk_size`` records) as blocks. Ray's built-in CSV/JSON/Parquet
readers lack what scoring needs: the line or row of each record, which default ids are made of and
bad rows are reported with, and the same validation as every other command.
Score: ``map_batches`` with a callable class, one per actor, that loads the model once (``Scorer``,
the local engine's: ONNX Runtime session and tokenizer, or a run) and scores each part whole, so the
batches, and therefore the scores, are the local engine's. The actor pool is sized to the cluster:
CPUs / threads per actor, or GPUs / ``num_gpus_per_actor``.
Write: Ray Data's ``write_parquet`` into a temporary folder beside the output, renamed at the end.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ToolkitError
from .io_utils import atomic_dir
from .score import ScoreConfig, ScoreSummary, Scorer, part_table
from .sources import PairChunk, PairSource, SourceOptions
from .sources.hf_dataset import is_dataset_folder
from .sources.source import EXTENSIONS

INSTALL = 'the Ray engine needs Ray: pip install "toolkit[ray]" (Ray Data 2.60)'
PART = "_part"
BLOCK_BYTES = 1 << 20


@dataclass
class RayConfig:
    """Where and how wide --engine ray runs."""

    num_gpus_per_actor: float = 0.0  # GPUs per scoring actor; 0 = CPU actors
    actors: Optional[int] = None
    """scoring actors (default: cluster CPUs / --threads, or GPUs / --num-gpus-per-actor)"""
    address: Optional[str] = None  # Ray cluster address (default: RAY_ADDRESS, else a local Ray instance)

    def validate(self) -> None:
        if self.num_gpus_per_actor < 0:
            raise ToolkitError("--num-gpus-per-actor must be 0 or more")
        if self.actors is not None and self.actors < 1:
            raise ToolkitError("--actors must be at least 1")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ToolkitError(INSTALL) from None
    return ray


def input_files(path: str) -> list[Path]:
    """A pair file (or datasets folder), or every pair file under a folder (sorted; hidden and ``_`` files
    skipped)."""
    if "://" in path:
        raise ToolkitError(f"{path}: remote URIs are not read yet; mount the bucket (e.g. s3fs) or copy the files "
                           "to storage every node sees")
    root = Path(path)
    if root.is_file() or is_dataset_folder(root):
        return [root]
    if not root.is_dir():
        raise ToolkitError(f"{path}: no such file or folder")
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS
                   and not any(part.startswith((".", "_")) for part in f.relative_to(root).parts))
    if not files:
        raise ToolkitError(f"{path}: no pair files in this folder ({', '.join(sorted(EXTENSIONS))})")
    return files


def read_parts(index: int, path: Path, name: Optional[str], options: SourceOptions, log) -> Iterator[pa.Table]:
    """One file's parts, each as ONE row of list columns (part key, ids, sentences, kept columns):
    however Ray Data merges or slices blocks, a part is never cut. ``name`` prefixes row-number ids
    when several files are read, so ids stay unique."""
    source = PairSource(path, options)
    for k, chunk in enumerate(source.chunks(keep_empty=True)):
        if not len(chunk):
            continue
        ids = chunk.ids if (name is None or options.columns.id_col) else [f"{name}:{i}" for i in chunk.ids]
        columns = {PART: [f"{index}:{k}"], "id": [ids], "s1": [chunk.s1], "s2": [chunk.s2]}
        columns.update({c: [chunk.extra[c]] for c in options.keep_cols})
        yield pa.table(columns)
    _ray().get(log.record.remote(index, str(path), source.report.rows, source.report.bad, source.report.problems))


class ScoreActor:
    """Ray Data's callable class: the model is loaded once per actor."""

    def __init__(self, model_path: str, cfg: ScoreConfig):
        self.scorer = Scorer(model_path, cfg)
        self.keep_cols = tuple(cfg.keep_cols)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for part in batch.to_pylist():  # one row per part; each part is scored whole, as locally
            chunk = PairChunk(ids=part["id"], s1=part["s1"], s2=part["s2"], scores=None, groups=None, locs=[],
                              extra={c: part[c] for c in self.keep_cols})
            tables.append(part_table(chunk, self.scorer.score(self.scorer.prepare(chunk)), self.keep_cols))
        return pa.concat_tables(tables)


def _user_error(e: Optional[BaseException]) -> Optional[ToolkitError]:
    """The toolkit's own error inside Ray's wrappers (RayTaskError and friends keep it as ``cause``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ToolkitError) and type(e).__module__.startswith("toolkit"):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def score_ray(model_path: str, input_path: str, out: str, options: SourceOptions, cfg: ScoreConfig,
              ray_cfg: RayConfig) -> ScoreSummary:
    """Score every pair under ``input_path`` into the Parquet folder ``out`` on a Ray cluster."""
    files = _check_request(input_path, out, cfg, ray_cfg)
    options = dataclasses.replace(options, need_score=False, chunk_size=cfg.chunk_size, keep_cols=tuple(cfg.keep_cols))
    for f in files:  # columns and format checked here, in one line, before any cluster work
        PairSource(f, options)
    ray = _ray()
    from ray.data import DataContext

    start = time.time()
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_cfg.address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = cfg.progress
        # blocks of about one part (a part is one row, ~1 MB for 8192 pairs): Ray's 128 MiB default
        # would hand most of a file to one actor
        context.target_max_block_size = BLOCK_BYTES
        threads = cfg.threads or 1
        log = _file_log(ray).remote()
        ds = ray.data.read_datasource(_pair_datasource(files, Path(input_path), options, log), num_cpus=0,
                                      override_num_blocks=len(files))
        ds = ds.map_batches(ScoreActor, fn_constructor_args=(str(Path(model_path).resolve()),
                                                             dataclasses.replace(cfg, threads=threads, progress=False)),
                            batch_format="pyarrow", batch_size=None,
                            compute=ray.data.ActorPoolStrategy(size=_pool_size(ray, threads, ray_cfg)),
                            num_cpus=0 if ray_cfg.num_gpus_per_actor > 0 else threads,
                            num_gpus=ray_cfg.num_gpus_per_actor or None)
        summary = _write(ray, ds, Path(out), log, len(files))
    finally:
        if started:
            ray.shutdown()
    summary.seconds = time.time() - start
    return summary


def _check_request(input_path: str, out: str, cfg: ScoreConfig, ray_cfg: RayConfig) -> list[Path]:
    """The input files, once the options and the output folder are known to be usable."""
    cfg.validate()
    ray_cfg.validate()
    if cfg.shard is not None:
        raise ToolkitError("--shard is for the local engine: the Ray engine spreads the work itself")
    out_path = Path(out)
    if out_path.suffix:
        raise ToolkitError(f"{out}: the Ray engine writes a folder of Parquet files: name a folder (-o DIR/)")
    if out_path.exists() and any(out_path.iterdir()) and not cfg.restart:
        raise ToolkitError(f"{out}: already exists and is not empty; pass --restart to score again")
    return input_files(input_path)


def _pool_size(ray, threads: int, ray_cfg: RayConfig) -> int:
    """Actors: --actors, else as many as the cluster's GPUs (or CPUs) hold."""
    resources = ray.cluster_resources()
    if ray_cfg.num_gpus_per_actor > 0:
        actors = ray_cfg.actors or int(resources.get("GPU", 0) // ray_cfg.num_gpus_per_actor)
        if actors < 1:
            raise ToolkitError(f"--num-gpus-per-actor {ray_cfg.num_gpus_per_actor:g}: the cluster has "
                               f"{resources.get('GPU', 0):g} GPUs")
        return actors
    return ray_cfg.actors or max(1, int(resources.get("CPU", 1) // threads))


def _file_log(ray):
    @ray.remote(num_cpus=0)
    class FileLog:
        """Rows read, bad rows and their first reports, per file (read tasks report here)."""

        def __init__(self):
            self.files: dict[int, tuple] = {}

        def record(self, index: int, *report) -> None:
            self.files[index] = report  # keyed: a retried read task reports once

        def all(self) -> dict:
            return self.files

    return FileLog


def _pair_datasource(files: list[Path], root: Path, options: SourceOptions, log):
    """One read task per file, yielding its parts (Ray's own readers would cut parts apart)."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    several = len(files) > 1

    class PairDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return sum(f.stat().st_size for f in files)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            tasks = []
            for i, f in enumerate(files):
                name = str(f.relative_to(root)) if several else None
                meta = BlockMetadata(num_rows=None, size_bytes=f.stat().st_size, input_files=[str(f)],
                                     exec_stats=None)
                tasks.append(ReadTask(lambda i=i, f=f, name=name: read_parts(i, f, name, options, log), meta))
            return tasks

    return PairDatasource()


def _write(ray, ds, out_path: Path, log, files: int) -> ScoreSummary:
    """Write the scored parts; published (renamed into place) only if every good row is there once."""
    summary = ScoreSummary(output=str(out_path))
    try:
        with atomic_dir(out_path) as tmp:
            ds.write_parquet(str(tmp))
            summary.written = sum(pq.ParquetFile(p).metadata.num_rows for p in tmp.glob("*.parquet"))
            _add_reports(summary, ray.get(log.all.remote()), files)
            if summary.rows - summary.bad != summary.written:
                raise ToolkitError(f"{out_path}: wrote {summary.written} rows but read {summary.rows - summary.bad} "
                                   "good ones; not published")
    except Exception as e:
        user = _user_error(e)
        if user is not None:
            raise user from None
        raise
    return summary


def _add_reports(summary: ScoreSummary, reports: dict, files: int) -> None:
    """The read tasks' per-file counts (each file reports once its last part is read)."""
    if len(reports) != files:
        raise ToolkitError(f"{files - len(reports)} of {files} input files were not read to the end; not published")
    for index in sorted(reports):
        _, rows, bad, problems = reports[index]
        summary.rows += rows
        summary.bad += bad
        summary.skipped_report.extend(problems)
