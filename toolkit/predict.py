"""Batched inference: length-sorted batches, results back in input order, scores on the user's scale."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .batching import PairTokenizer, length_sorted_batches
from .labels import LabelScale
from .model import PairRegressor


class Predictor:
    """Scores pairs with a trained model. Bi-encoders embed each distinct sentence once."""

    def __init__(self, model: PairRegressor, tokens: PairTokenizer, labels: LabelScale,
                 batch_size: int = 128, device: torch.device | str = "cpu"):
        self.model = model
        self.tokens = tokens
        self.labels = labels
        self.batch_size = batch_size
        self.device = torch.device(device)

    @torch.inference_mode()
    def predict_normalized(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.model.cfg.arch == "cross":
                return self._cross(s1, s2)
            return self._bi(s1, s2)
        finally:
            self.model.train(was_training)

    def predict(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        return self.labels.denormalize(self.predict_normalized(s1, s2))

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _cross(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        encoded = [e[0] for e in self.tokens.encode_pairs(s1, s2)]
        out = np.empty(len(encoded), dtype=np.float64)
        for idx in length_sorted_batches([len(e) for e in encoded], self.batch_size):
            batch = self._to_device(self.tokens.pad([encoded[i] for i in idx]))
            out[idx] = self.model(**batch).double().cpu().numpy()
        return out

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled embeddings (float32, on the CPU) of ``texts``, in order."""
        encoded = self.tokens.encode_texts(texts)
        out = torch.empty((len(encoded), self.model.encoder.config.hidden_size), dtype=torch.float32)
        for idx in length_sorted_batches([len(e) for e in encoded], self.batch_size):
            batch = self._to_device(self.tokens.pad([encoded[i] for i in idx]))
            out[torch.as_tensor(idx)] = self.model.embed(**batch).float().cpu()
        return out

    def _bi(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        unique = list(dict.fromkeys([*s1, *s2]))
        where = {s: i for i, s in enumerate(unique)}
        emb = self.embed(unique)
        a = emb[torch.tensor([where[s] for s in s1])]
        b = emb[torch.tensor([where[s] for s in s2])]
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).double().numpy()
