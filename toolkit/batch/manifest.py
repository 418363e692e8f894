"""The exactly-once protocol of ``toolkit score`` (docs/scoring.md): parts and their manifest.

Work is cut into parts of ``chunk_size`` input records, deterministic for a given file and chunk
size. Each part's scores are written to ``PARTS/part-NNNNN.parquet`` atomically and durably (temp
file, fsync, rename, fsync of the folder) and only then recorded in ``PARTS/manifest.json`` (written
the same way). A run killed at any moment leaves complete parts; started again with the same command
it skips the recorded parts and recomputes the rest, so every row is written once. The manifest also
fingerprints the model, the input and every setting that changes the output: a resume against
anything else is refused, naming what changed, unless ``restart``.
Output to a file: once the parts hold every good row of the input, they are streamed, in order, into
it; the manifest then records the output as complete, and only after that are the parts and the
manifest removed. Output to a folder: the parts and manifest are the output. The crash points
(``failpoints.crash_point``) mark the steps between which a test kills the process.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq

from toolkit import __version__
from toolkit.batch.config import ScoreConfig
from toolkit.batch.outputs import out_format
from toolkit.common.atomic_io import fsync_dir, read_json, write_json
from toolkit.common.errors import ToolkitError, first_line
from toolkit.common.failpoints import crash_point
from toolkit.common.settings_diff import differences, summarize
from toolkit.sources import SourceOptions

MANIFEST = "manifest.json"


def input_fingerprint(path: Path) -> dict:
    """Size, modification time and the hash of the first and last MiB: a changed file is caught
    without reading all of it again. A folder (a datasets save_to_disk) is the sum of its files."""
    if path.is_dir():
        files = [input_fingerprint(f) for f in sorted(path.iterdir()) if f.is_file()]
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


def output_settings(options: SourceOptions, cfg: ScoreConfig) -> dict:
    """Every option that changes the output: which rows (format, columns, score range, bad-row
    policy, --limit), how they are cut into parts and batches (int8's dynamic quantisation depends on
    the batch), which shard, which columns are kept."""
    return {"source": json.loads(json.dumps(asdict(options), default=str)), "chunk_size": cfg.chunk_size,
            "batch_size": cfg.batch_size, "shard": list(cfg.shard) if cfg.shard else None,
            "keep_cols": list(cfg.keep_cols)}


def remove_parts(parts_dir: Path, pattern: str, keep: frozenset = frozenset()) -> None:
    """Part files (and temp files of interrupted writes) matching ``pattern``, except ``keep``."""
    for path in [*parts_dir.glob(pattern), *parts_dir.glob(f".{pattern}.*.tmp")]:
        if path.name not in keep:
            path.unlink(missing_ok=True)
            crash_point("score.part-removed")
    fsync_dir(parts_dir)


def open_manifest(job: "Job", identity: dict, restart: bool) -> dict:
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
        remove_parts(job.parts_dir, manifest.pop("removing"), keep=recorded)
        write_json(job.manifest, manifest)
    return manifest


def verify_parts(job: "Job", parts: list[dict]) -> None:
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


@dataclass
class Job:
    """Where one ``score_file`` call writes: the output, its parts folder and their names."""

    out: Path
    to_dir: bool
    parts_dir: Path
    tag: str  # shard prefix of part and manifest names in a shared output folder

    @classmethod
    def plan(cls, out: str, shard: Optional[tuple[int, int]]) -> "Job":
        out_path = Path(out)
        to_dir = out.endswith((os.sep, "/")) or out_path.is_dir() or not out_path.suffix
        if not to_dir and out_format(out_path) is None:
            raise ToolkitError(f"{out}: unknown output format {out_path.suffix!r} "
                               "(use .parquet, .csv, .tsv or .jsonl, or a folder/)")
        parts_dir = out_path if to_dir else out_path.with_name(out_path.name + ".parts")
        tag = f"shard-{shard[0]:03d}-of-{shard[1]:03d}-" if (shard and to_dir) else ""
        return cls(out_path, to_dir, parts_dir, tag)

    @property
    def manifest(self) -> Path:
        return self.parts_dir / f"{self.tag}{MANIFEST}"


def clean_up(job: Job, manifest: dict) -> None:
    """After the output is published and the manifest says so: remove the parts, then the manifest."""
    for name in manifest["files"]:
        (job.parts_dir / name).unlink(missing_ok=True)
        crash_point("score.cleanup.part")
    remove_parts(job.parts_dir, f"{job.tag}part-*.parquet")
    job.manifest.unlink(missing_ok=True)
    # temp files that crashed writes of the manifest or the output left behind
    for stale in [*job.parts_dir.glob(f".{job.manifest.name}.*.tmp"), *job.out.parent.glob(f".{job.out.name}.*.tmp")]:
        stale.unlink(missing_ok=True)
    if not any(job.parts_dir.iterdir()):
        job.parts_dir.rmdir()
