"""Batched inference: length-sorted batches, results back in input order, scores on the user's scale.

Given an Accelerator with several processes, the batches are sharded across them and the outputs
gathered with ``gather_for_metrics``, which drops the samples the even sharding pads in: every
process gets the same, complete result, equal to a single-process run. Every process must call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .batching import Encoded, PairTokenizer
from .labels import LabelScale
from .model import PairRegressor


class Predictor:
    """Scores pairs with a trained model. Bi-encoders embed each distinct sentence once."""

    def __init__(self, model: PairRegressor, tokens: PairTokenizer, labels: LabelScale,
                 batch_size: int = 128, device: torch.device | str = "cpu", accelerator=None):
        self.model = model
        self.tokens = tokens
        self.labels = labels
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.accelerator = accelerator if accelerator is not None and accelerator.num_processes > 1 else None

    @torch.inference_mode()
    def predict_normalized(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.model.cfg.arch == "cross":
                encoded = [e[0] for e in self.tokens.encode_pairs(s1, s2)]
                return self.run_batches(encoded, self.model).double().numpy()
            return self._bi(s1, s2)
        finally:
            self.model.train(was_training)

    def predict(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        return self.labels.denormalize(self.predict_normalized(s1, s2))

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled embeddings (float32, on the CPU) of ``texts``, in order."""
        return self.run_batches(self.tokens.encode_texts(texts), self.model.embed)

    def _bi(self, s1: Sequence[str], s2: Sequence[str]) -> np.ndarray:
        unique = list(dict.fromkeys([*s1, *s2]))
        where = {s: i for i, s in enumerate(unique)}
        emb = self.embed(unique)
        a = emb[torch.tensor([where[s] for s in s1])]
        b = emb[torch.tensor([where[s] for s in s2])]
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).double().numpy()

    def run_batches(self, items: list[Encoded], fn: Callable[..., torch.Tensor]) -> torch.Tensor:
        """``fn`` over length-sorted batches of ``items``; rows (float32, CPU) in input order."""
        order = np.argsort(-np.asarray([len(e) for e in items]), kind="stable")
        loader = DataLoader([items[i] for i in order], batch_size=self.batch_size, collate_fn=self.tokens.pad)
        if self.accelerator is not None:
            loader = _shard(loader, self.accelerator)
        outputs = []
        for batch in loader:
            out = fn(**{k: v.to(self.device) for k, v in batch.items()})
            if self.accelerator is not None:
                out = self.accelerator.gather_for_metrics(out)
            outputs.append(out.float().cpu())
        rows = torch.cat(outputs)
        result = torch.empty_like(rows)
        result[torch.as_tensor(order)] = rows
        return result


def _shard(loader: DataLoader, accelerator) -> DataLoader:
    """Each process takes every n-th batch; the last round is padded (and the padding dropped again by
    ``gather_for_metrics``). Not registered with the accelerator: nothing of it goes into checkpoints."""
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(loader, device=None, num_processes=accelerator.num_processes,
                               process_index=accelerator.process_index, split_batches=False,
                               put_on_device=False, even_batches=True)
