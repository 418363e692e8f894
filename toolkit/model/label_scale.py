"""Target normalisation: the model learns on a unit scale, users see their own scale."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from toolkit.common.errors import ToolkitError


@dataclass(frozen=True)
class LabelScale:
    """score = offset + scale * y, where y is what the model is trained to output.

    "range" maps a declared range onto 0..1 (a bi-encoder's cosine is trained on exactly that,
    as sentence-transformers' CosineSimilarityLoss does); "zscore" uses the training mean and std.
    """

    kind: str
    offset: float
    scale: float

    @classmethod
    def from_range(cls, low: float, high: float) -> "LabelScale":
        return cls("range", float(low), float(high) - float(low))

    @classmethod
    def from_scores(cls, scores: np.ndarray) -> "LabelScale":
        std = float(np.std(scores))
        if not std > 0:
            raise ToolkitError("all training scores are equal: nothing to learn (z-score needs a spread)")
        return cls("zscore", float(np.mean(scores)), std)

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, dtype=np.float64) - self.offset) / self.scale

    def denormalize(self, y: np.ndarray) -> np.ndarray:
        return self.offset + self.scale * np.asarray(y, dtype=np.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelScale":
        return cls(d["kind"], float(d["offset"]), float(d["scale"]))
