"""Silver pairs for distillation: pairs sampled among the training sentences and scored by a teacher.

As Augmented SBERT samples them: random pairs (mostly unrelated: the low end of the scale) and each
sentence with one of its nearest neighbours (mostly related: the high end), so that the silver
scores cover the whole range rather than piling up near zero. Neighbours are found under the
teacher's own embeddings when it is a bi-encoder; a cross-encoder has none, so they are found under
the student's starting model (its base, zero-shot), which is what Augmented SBERT's semantic search
sampling does with a bi-encoder beside a cross-encoder. No silver pair is a gold training pair, a
pair of one sentence with itself, or another silver pair again (in either order); dev sentences are
never sampled (the student is selected on them).

A bi-encoder teacher embeds each distinct sentence once; the same embeddings give the neighbours
and the scores. Labels are kept beside the run, named by what made them (the teacher's files, the
gold pairs, the sampling settings): a rerun reads them back instead of labelling again.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toolkit.common.atomic_io import atomic_path, read_json, write_json
from toolkit.common.errors import ToolkitError
from toolkit.sources import PairChunk

SILVER_COLUMNS = ("sentence1", "sentence2", "score", "origin")


@dataclass
class SilverPairs:
    """Sampled pairs (``origin``: "random" or "neighbour") and the teacher's scores, in a seeded random
    order: any prefix is a random subset."""

    s1: list[str]
    s2: list[str]
    scores: np.ndarray
    origin: list[str]

    def __len__(self) -> int:
        return len(self.s1)


def distinct_sentences(pairs: PairChunk) -> list[str]:
    return list(dict.fromkeys([*pairs.s1, *pairs.s2]))


def nearest_neighbours(embeddings: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """(n, k) indices of each row's ``k`` most cosine-similar other rows, most similar first (ties:
    the lower index); in blocks of rows, so that memory stays ~``block`` x n floats."""
    x = np.asarray(embeddings, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    n = len(x)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        sims = x[start:start + block] @ x.T
        rows = np.arange(start, min(start + block, n))
        sims[rows - start, rows] = -np.inf  # not itself
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # k <= n - 1: itself (at -inf) is never picked
        picked = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -picked), axis=1)  # by similarity, then index
        out[rows] = np.take_along_axis(top, order, axis=1)
    return out


def sample_pairs(sentences: list[str], gold: PairChunk, count: int, neighbour_share: float,
                 neighbours: Optional[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(first, second, origin): ``count`` distinct unordered pairs of sentence indices, about
    ``neighbour_share`` of them a sentence and one of its ``neighbours``, the rest random; shuffled."""
    rng = np.random.default_rng(seed)
    index = {s: i for i, s in enumerate(sentences)}
    taken = {(min(index[a], index[b]), max(index[a], index[b])) for a, b in zip(gold.s1, gold.s2)}
    n = len(sentences)
    possible = n * (n - 1) // 2 - len(taken)
    if count > possible:
        raise ToolkitError(f"--silver-pairs {count}: the {n} training sentences make only {possible} pairs that are "
                           "not gold pairs")
    chosen: dict[tuple[int, int], str] = {}

    def add(i: int, j: int, origin: str) -> None:
        key = (min(i, j), max(i, j))
        if i != j and key not in taken and key not in chosen:
            chosen[key] = origin

    want_neighbours = round(count * neighbour_share) if neighbours is not None else 0
    if want_neighbours:
        candidates = np.stack([np.repeat(np.arange(n), neighbours.shape[1]), neighbours.ravel()], axis=1)
        for i, j in candidates[rng.permutation(len(candidates))]:
            if len(chosen) >= want_neighbours:
                break
            add(int(i), int(j), "neighbour")
    while len(chosen) < count:  # random pairs fill the rest (and any neighbours there were too few of)
        for i, j in rng.integers(0, n, size=(2 * (count - len(chosen)) + 16, 2)):
            if len(chosen) >= count:
                break
            add(int(i), int(j), "random")
    keys = list(chosen)
    order = rng.permutation(len(keys))
    first = np.array([keys[o][0] for o in order], dtype=np.int64)
    second = np.array([keys[o][1] for o in order], dtype=np.int64)
    return first, second, [chosen[keys[o]] for o in order]


@dataclass
class SilverSettings:
    """What decides the silver pairs (beside the teacher and the gold pairs)."""

    count: int
    neighbour_share: float
    neighbours: int
    seed: int
    sampler: str  # "teacher" or the student's base model, whose embeddings found the neighbours


def silver_key(teacher_files: dict, gold: PairChunk, settings: SilverSettings) -> tuple[str, dict]:
    """(short key naming the labels, what it is made of): a rerun with the same inputs finds them."""
    h = hashlib.sha256()
    for a, b, s in zip(gold.s1, gold.s2, gold.scores):
        h.update(f"{a}\x00{b}\x00{float(s)!r}\x00".encode("utf-8", "surrogatepass"))
    made_of = {"teacher_files": teacher_files, "gold_train_sha256": h.hexdigest(),
               "settings": dataclasses.asdict(settings)}
    key = hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:16]
    return key, made_of


def write_silver(path: Path, silver: SilverPairs, made_of: dict) -> None:
    """The pairs as a Parquet file and what made them beside it (``.json``), each written atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"sentence1": silver.s1, "sentence2": silver.s2, "score": silver.scores, "origin": silver.origin})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    write_json(path.with_suffix(".json"), {**made_of, "pairs": len(silver)})


def read_silver(path: Path, made_of: dict) -> Optional[SilverPairs]:
    """Labels kept by an earlier run with the same teacher, gold pairs and settings; None if there
    are none (or they do not match, or cannot be read: they are made again)."""
    import pyarrow.parquet as pq

    try:
        record = read_json(path.with_suffix(".json"))
        table = pq.read_table(path, columns=list(SILVER_COLUMNS)).to_pydict()
    except (OSError, ValueError):
        return None
    if {k: record.get(k) for k in made_of} != made_of or record.get("pairs") != len(table["score"]):
        return None
    return SilverPairs(table["sentence1"], table["sentence2"], np.asarray(table["score"], dtype=np.float64),
                       table["origin"])
