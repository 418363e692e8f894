"""The one scoring path, for a PyTorch model and an ONNX bundle alike.

tokenise → order by length → batch → forward → restore input order; a bi-encoder embeds each
distinct sentence once and scores the cosine of the two embeddings; scores go back onto the user's
scale. An engine supplies only what differs: how text becomes token ids, and the forward of one
padded batch (``torch_engine.TorchEngine``: PyTorch, also sharded over the processes of a distributed
run; ``onnx_bundle.OnnxEngine``: ONNX Runtime). numpy only: a bundle is scored without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from toolkit.model.architectures import architecture


class Engine(Protocol):
    arch: str  # "bi": forward gives embeddings; "cross": the normalised score of each pair

    def tokenize(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list:
        """Token ids of each text (bi) or pair (cross); each item has a length (``len``)."""

    def forward(self, batch: list) -> np.ndarray:
        """Rows (float32) for one batch of tokenised items, padded as the engine needs."""

    def map_batches(self, batches: list[list], forward: Callable[[list], np.ndarray]) -> list[np.ndarray]:
        """``forward`` over every batch (a distributed engine shares them out and gathers)."""


def map_batches(batches: list[list], forward: Callable[[list], np.ndarray]) -> list[np.ndarray]:
    """The single-process ``Engine.map_batches``."""
    return [forward(b) for b in batches]


def cosine(rows: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Each pair's cosine of its two sentences' rows (float64): a bi-encoder's normalised score."""
    a, b = rows[first].astype(np.float64), rows[second].astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-8)


@dataclass
class EncodedPairs:
    """Tokenised input of ``PairScorer.score_encoded``: pairs (cross), or distinct sentences and the
    two index arrays that pick each pair's sentences (bi)."""

    joint: bool  # cross: each item is a pair; bi: each item a sentence
    items: list
    first: Optional[np.ndarray] = None
    second: Optional[np.ndarray] = None


class PairScorer:
    """Scores pairs with an engine: the path every command (predict, eval, score, wise, training's
    dev evaluation, the export gate) goes through."""

    def __init__(self, engine: Engine, offset: float = 0.0, scale: float = 1.0, batch_size: int = 64):
        self.engine = engine
        self.offset, self.scale = float(offset), float(scale)
        self.batch_size = batch_size

    @property
    def arch(self) -> str:
        return self.engine.arch

    def encode(self, s1: Sequence[str], s2: Sequence[str], dedupe: bool = True) -> EncodedPairs:
        """Tokenise (the half of ``predict`` a reader thread can do while the other runs)."""
        if len(s1) != len(s2):
            raise ValueError("s1 and s2 differ in length")
        if architecture(self.arch).joint:
            return EncodedPairs(True, self.engine.tokenize(list(s1), list(s2)))
        if not dedupe:
            n = len(s1)
            return EncodedPairs(False, self.engine.tokenize([*s1, *s2]), np.arange(n), np.arange(n, 2 * n))
        unique = list(dict.fromkeys([*s1, *s2]))
        where = {s: i for i, s in enumerate(unique)}
        return EncodedPairs(False, self.engine.tokenize(unique), np.array([where[s] for s in s1], dtype=np.int64),
                       np.array([where[s] for s in s2], dtype=np.int64))

    def score_encoded(self, encoded: EncodedPairs, sort: bool = True) -> np.ndarray:
        """Scores on the user's scale."""
        return self.offset + self.scale * self.normalized(encoded, sort)

    def normalized(self, encoded: EncodedPairs, sort: bool = True) -> np.ndarray:
        """What the model was trained to output (float64), in input order."""
        if not encoded.items:
            return np.zeros(0)
        rows = self.run(encoded.items, sort=sort)
        if encoded.joint:
            return rows[:, 0].astype(np.float64)
        return cosine(rows, encoded.first, encoded.second)

    def score_embedded(self, embeddings: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Scores on the user's scale of the pairs (``first[i]``, ``second[i]``) of rows of ``embeddings``
        (a bi-encoder's, from ``embed``): each sentence embedded once, however many pairs it is in."""
        return self.offset + self.scale * cosine(embeddings, first, second)

    def predict(self, s1: Sequence, s2: Optional[Sequence[str]] = None, dedupe: bool = True,
                sort: bool = True) -> np.ndarray:
        """Scores on the user's scale, in input order, of ``predict([(a, b), ...])`` or
        ``predict(s1, s2)``. Dedupe (bi) and length order only save work."""
        if s2 is None:
            s1, s2 = [p[0] for p in s1], [p[1] for p in s1]
        return self.score_encoded(self.encode(s1, s2, dedupe), sort)

    def predict_normalized(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        return self.normalized(self.encode(s1, s2))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Sentence embeddings (bi-encoders), in input order."""
        return self.run(self.engine.tokenize(list(texts)))

    def run(self, items: list, forward: Optional[Callable[[list], Any]] = None, sort: bool = True) -> np.ndarray:
        """``forward`` (the engine's by default) over batches of ``items`` ordered longest first, so
        that each batch pads little; rows come back in input order."""
        order = np.argsort([-len(e) for e in items], kind="stable") if sort else np.arange(len(items))
        batches = [[items[i] for i in order[k:k + self.batch_size]] for k in range(0, len(order), self.batch_size)]
        rows = np.concatenate(self.engine.map_batches(batches, forward or self.engine.forward))
        result = np.empty_like(rows)
        result[order] = rows
        return result
