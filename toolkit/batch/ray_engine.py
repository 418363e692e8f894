"""``toolkit score --engine ray``: the local engine's scoring, run by Ray Data on a cluster.

Plan: the driver reads each file once through the toolkit's own readers (the same validation, bad-row
policy and report as every other command, and a bad row stops the job in file order before any
cluster work), noting where each part (``chunk_size`` records) starts. Read: one Ray read task per
part; CSV/TSV, JSONL and Parquet readers start at the part's offset (byte or row), SQLite and datasets
folders are read whole by one task yielding their parts. Ray's built-in CSV/JSON/Parquet readers lack
what scoring needs: the line or row of each record, which default ids are made of, and read one task
per file. Score: ``map_batches`` with a callable class, one per actor, that loads the model once
(``FileScorer``, the local engine's: ONNX Runtime session and tokenizer, or a run) and scores each part
whole, so the batches, and therefore the scores, are the local engine's; each actor takes one part at
a time (``max_tasks_in_flight_per_actor=1``), so none idles while another has a queue, and the job
starts once the pool is up. Write: Ray Data's ``write_parquet`` into a temporary folder beside the
output, renamed into place only if every good row is there once (as many rows as the driver read, and
the same ids); pairs scored per node and per actor are recorded (a retried part counts once). One job
per output folder (``atomic_io.output_lock``, shared with the local engine).
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit.batch.config import ScoreConfig, ScoreSummary
from toolkit.batch.outputs import part_table
from toolkit.batch.stream import FileScorer
from toolkit.common.atomic_io import atomic_dir, output_lock
from toolkit.common.errors import ToolkitError, first_line, show, show_path
from toolkit.common.option_types import Count, NonNegative, Positive, check_options
from toolkit.sources import PairChunk, PairSource, PartPlan, SourceOptions
from toolkit.sources.hf_dataset import is_dataset_folder
from toolkit.sources.source import EXTENSIONS

INSTALL = 'the Ray engine needs Ray: pip install "sentence-pair-toolkit[ray]" (Ray Data 2.60)'
PART = "_part"
BLOCK_BYTES = 1 << 20


ADDRESS = re.compile(r"auto|ray://[^\s:/]+:\d+|[^\s:/]+:\d+")


@dataclass
class RayConfig:
    """Where and how wide --engine ray runs."""

    num_gpus_per_actor: NonNegative = 0.0  # GPUs per scoring actor; 0 = CPU actors
    actors: Optional[Count] = None
    """scoring actors (default: cluster CPUs / --threads, or GPUs / --num-gpus-per-actor)"""
    address: Optional[str] = None
    """an existing cluster: auto (this node's), HOST:PORT (its head's GCS) or ray://HOST:PORT (Ray Client);
    default: RAY_ADDRESS, else a local Ray instance for this job"""
    wait_actors_s: Positive = 600.0  # wait this long for every scoring actor to start, then fail in one line

    def validate(self) -> None:
        check_options(self)
        if self.address is not None and not ADDRESS.fullmatch(self.address):
            raise ToolkitError(f"--address {show(self.address, 60)}: expected auto, HOST:PORT or ray://HOST:PORT")


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


@dataclass(frozen=True)
class ReadPart:
    """One read task: a part of a file (``plan`` from the driver's read), or a whole file read in parts."""

    index: int  # the file's place in the input
    path: Path
    name: Optional[str]  # prefix of row-number ids when several files are read
    key: int  # the part's number in its file (whole files: the first part's)
    plan: Optional[PartPlan]
    stamp: tuple[int, int]  # size and mtime of the file when planned


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def ids_digest(ids: Iterable[str]) -> int:
    """An order-free digest of a multiset of ids (Ray writes parts in any order): the sum of their
    hashes, mod 2**64. Python's string hash is keyed per process: the plan and the check that
    compares with it both run on the driver."""
    return sum(map(hash, ids)) % (1 << 64)


@dataclass
class Planned:
    """What the output must hold, from the driver's read: the good rows and the digest of their ids
    (a part lost and another of its size written twice keep the count, not the digest)."""

    rows: int = 0
    digest: int = 0

    def add(self, ids: list[str]) -> None:
        self.rows += len(ids)
        self.digest = (self.digest + ids_digest(ids)) % (1 << 64)


def _part_ids(name: Optional[str], chunk: PairChunk, options: SourceOptions) -> list[str]:
    """A part's ids as written: row-number ids of one file among several are prefixed with its name."""
    return chunk.ids if (name is None or options.columns.id_col) else [f"{name}:{i}" for i in chunk.ids]


def plan_reads(files: list[Path], root: Path, options: SourceOptions
               ) -> tuple[list[ReadPart], ScoreSummary, Planned]:
    """Read every file once here: its report (bad rows under the policy, in file order, as the local
    engine gives them), where each of its parts starts and the ids the output must hold."""
    summary, tasks, several, planned = ScoreSummary(), [], len(files) > 1, Planned()
    for index, path in enumerate(files):
        stamp = _stamp(path) if path.is_file() else (0, 0)
        source = PairSource(path, options)
        name = str(path.relative_to(root)) if several else None
        for chunk in source.chunks(keep_empty=True):
            planned.add(_part_ids(name, chunk, options))
        if source.reader.splittable:
            tasks += [ReadPart(index, path, name, k, part, stamp) for k, part in enumerate(source.plan) if part.good]
        elif source.report.good:
            tasks.append(ReadPart(index, path, name, 0, None, stamp))
        summary.rows += source.report.rows
        summary.bad += source.report.bad
        summary.skipped_report.extend(source.report.problems)
    return tasks, summary, planned


def read_parts(task: ReadPart, options: SourceOptions) -> Iterator[pa.Table]:
    """A read task's parts, each as ONE row of list columns (part key, ids, sentences, kept columns):
    however Ray Data merges or slices blocks, a part is never cut."""
    if task.path.is_file() and _stamp(task.path) != task.stamp:
        raise ToolkitError(f"{task.path}: changed while being scored; score it again")
    source = PairSource(task.path, options)
    if task.plan is not None:
        chunks = [(task.key, source.read_part(task.plan))]
    else:
        chunks = enumerate(source.chunks(keep_empty=True))
    for k, chunk in chunks:
        if not len(chunk):
            continue
        columns = {PART: [f"{task.index}:{k}"], "id": [_part_ids(task.name, chunk, options)], "s1": [chunk.s1],
                   "s2": [chunk.s2]}
        columns.update({c: [chunk.extra[c]] for c in options.keep_cols})
        yield pa.table(columns)


class ScoreActor:
    """Ray Data's callable class: the model is loaded once per actor."""

    def __init__(self, model_path: str, cfg: ScoreConfig, log):
        self.scorer = FileScorer(model_path, cfg)
        self.keep_cols = tuple(cfg.keep_cols)
        self.log = log
        context = _ray().get_runtime_context()
        self.where = (context.get_node_id(), context.get_actor_id())

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = []
        for part in batch.to_pylist():  # one row per part; each part is scored whole, as locally
            chunk = PairChunk(ids=part["id"], s1=part["s1"], s2=part["s2"], scores=None, groups=None, locs=[],
                              extra={c: part[c] for c in self.keep_cols})
            t0 = time.perf_counter()
            prepared = self.scorer.prepare(chunk)
            t1 = time.perf_counter()
            scores = self.scorer.score(prepared)
            t2 = time.perf_counter()
            tables.append(part_table(chunk, scores, self.keep_cols))
            _ray().get(self.log.record.remote(part[PART], *self.where, len(chunk.ids), t1 - t0, t2 - t1))
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
    with output_lock(out):  # before the output is looked at: one job per output, whichever engine
        out_path = Path(out)
        if out_path.exists() and any(out_path.iterdir()) and not cfg.restart:
            raise ToolkitError(f"{show_path(out)}: already exists and is not empty; pass --restart to score again")
        return _score_ray(model_path, files, input_path, out, options, cfg, ray_cfg)


def _score_ray(model_path: str, files: list[Path], input_path: str, out: str, options: SourceOptions,
               cfg: ScoreConfig, ray_cfg: RayConfig) -> ScoreSummary:
    options = dataclasses.replace(options, need_score=False, chunk_size=cfg.chunk_size, keep_cols=tuple(cfg.keep_cols))
    if cfg.runtime == "auto":  # each actor measuring its candidates at once, on shared cores, would measure noise
        cfg = dataclasses.replace(cfg, runtime="onnxruntime")
    start = time.time()
    tasks, summary, expected = plan_reads(files, Path(input_path), options)  # bad input fails here, before the cluster
    planned = time.time() - start
    ray = _ray()
    from ray.data import DataContext

    started = not ray.is_initialized()
    if started:
        # "local": a new instance for this job, not the last cluster `ray start` ran here (ray.init's None)
        _connect(ray, ray_cfg.address or os.environ.get("RAY_ADDRESS") or "local")
    try:
        context = DataContext.get_current()
        context.enable_progress_bars = cfg.progress
        # blocks of about one part (a part is one row, ~1 MB for 8192 pairs): Ray's 128 MiB default
        # would merge parts into blocks that one actor takes whole
        context.target_max_block_size = BLOCK_BYTES
        context.wait_for_min_actors_s = int(max(1, round(ray_cfg.wait_actors_s)))
        threads = cfg.threads or 1
        actors = _pool_size(ray, threads, ray_cfg)
        log = _score_log(ray).remote()  # on the driver's node: it outlives any worker node
        # reads and writes take no CPU (a part is read in milliseconds; the actors hold every CPU), and
        # run a few at a time: each task at once would start a Python worker process per task
        ds = ray.data.read_datasource(_pair_datasource(tasks, options), num_cpus=0, concurrency=actors,
                                      override_num_blocks=max(1, len(tasks)))
        ds = ds.map_batches(ScoreActor, fn_constructor_args=(str(Path(model_path).resolve()),
                                                             dataclasses.replace(cfg, threads=threads, progress=False),
                                                             log),
                            batch_format="pyarrow", batch_size=None,
                            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
                            num_cpus=0 if ray_cfg.num_gpus_per_actor > 0 else threads,
                            num_gpus=ray_cfg.num_gpus_per_actor or None)
        _write(ray, ds, Path(out), log, summary, actors, ray_cfg, expected)
    finally:
        if started:
            ray.shutdown()
    summary.seconds = time.time() - start
    summary.timing = {"plan": planned, "cluster": summary.seconds - planned, **summary.timing}
    return summary


def _connect(ray, address: Optional[str]) -> None:
    """Join the cluster at ``address``, or start a Ray instance for this job ("local")."""
    # Ray Client (ray://) takes none of the local-driver options
    kwargs = {} if address and address.startswith("ray://") else \
        {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ToolkitError(f"could not connect to the Ray cluster at {show(address, 60)}: {first_line(e)}") from None


def _check_request(input_path: str, out: str, cfg: ScoreConfig, ray_cfg: RayConfig) -> list[Path]:
    """The input files, once the options and the output's name are known to be usable."""
    cfg.validate()
    ray_cfg.validate()
    if cfg.shard is not None:
        raise ToolkitError("--shard is for the local engine: the Ray engine spreads the work itself")
    out_path = Path(out)
    if out_path.suffix:
        raise ToolkitError(f"{out}: the Ray engine writes a folder of Parquet files: name a folder (-o DIR/)")
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


def _score_log(ray):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)

    @ray.remote(num_cpus=0, scheduling_strategy=here)
    class ScoreLog:
        """Where and how fast each part was scored: node, actor, pairs, tokenise and inference seconds
        (keyed by part, so a retried part counts once)."""

        def __init__(self):
            self.parts: dict[str, tuple[str, str, int, float, float]] = {}

        def record(self, part: str, *where_and_times) -> None:
            self.parts[part] = where_and_times

        def all(self) -> dict:
            return self.parts

    return ScoreLog


def _pair_datasource(tasks: list[ReadPart], options: SourceOptions):
    """One read task per part (per file for readers that cannot start mid-file)."""
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class PairDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> Optional[int]:
            return sum(t.stamp[0] for t in tasks)

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            return [ReadTask(lambda t=t: read_parts(t, options),
                             BlockMetadata(num_rows=None, size_bytes=None, input_files=[str(t.path)], exec_stats=None))
                    for t in tasks]

    return PairDatasource()


def _write(ray, ds, out_path: Path, log, summary: ScoreSummary, actors: int, ray_cfg: RayConfig,
           planned: Planned) -> None:
    """Write the scored parts; published (renamed into place) only if every good row is there once:
    as many rows as planned, and the ids planned (a retried write task or a lost block can keep the
    count right and the rows wrong)."""
    summary.output = str(out_path)
    try:
        with atomic_dir(out_path) as tmp:
            ds.write_parquet(str(tmp), ray_remote_args={"num_cpus": 0}, concurrency=actors)
            summary.written, digest = _written(tmp)
            if planned.rows != summary.written:
                raise ToolkitError(f"{show_path(out_path)}: wrote {summary.written} rows but read {planned.rows} "
                                   "good ones; not published")
            if planned.digest != digest:
                raise ToolkitError(f"{show_path(out_path)}: wrote as many rows as the good ones read, but not the "
                                   "same ids (a part lost and another written twice); not published")
            parts = ray.get(log.all.remote())
            summary.spread = spread(parts)
            summary.timing = {"tokenise": sum(p[3] for p in parts.values()), "run": sum(p[4] for p in parts.values())}
    except ray.exceptions.GetTimeoutError:
        raise ToolkitError(f"the cluster did not start {actors} scoring actors in {ray_cfg.wait_actors_s:g}s "
                           f"(it has {_resources(ray)}); ask for fewer (--actors) or add nodes") from None
    except Exception as e:
        user = _user_error(e)
        if user is not None:
            raise user from None
        raise


def _written(folder: Path) -> tuple[int, int]:
    """Rows and the digest of their ids, over the Parquet files Ray wrote into ``folder``."""
    rows = digest = 0
    for path in sorted(folder.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(columns=["id"]):
            rows += batch.num_rows
            digest = (digest + ids_digest(batch.column(0).to_pylist())) % (1 << 64)
    return rows, digest


def spread(parts: dict) -> dict[str, dict[str, int]]:
    """Pairs scored per node and per actor."""
    nodes, actors = Counter(), Counter()
    for node, actor, n, *_ in parts.values():
        nodes[node] += n
        actors[actor] += n
    return {"nodes": dict(nodes), "actors": dict(actors)}


def _resources(ray) -> str:
    resources = ray.cluster_resources()
    return ", ".join(f"{resources.get(k, 0):g} {k}s" for k in ("CPU", "GPU"))
