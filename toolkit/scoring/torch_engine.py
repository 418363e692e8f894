"""PyTorch on the one scoring path (pair_scorer.py): the engine for a ``PairRegressor`` (or a merged
folder's ``MergedRegressor``), and ``Predictor``, the scorer every PyTorch caller uses.

Given an Accelerator with several processes (training's dev evaluation), the length-sorted batches
are shared out round-robin and the rows gathered back: every process gets the same, complete
result, equal to a single-process run. Each process runs the same number of forwards (the last
round padded with a repeat that is dropped), as DeepSpeed ZeRO-3 needs. Every process must call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from toolkit.model.architectures import architecture
from toolkit.model.batching import Encoded, PairTokenizer
from toolkit.model.label_scale import LabelScale
from toolkit.scoring.pair_scorer import PairScorer


class TorchEngine:
    """Tokenises with the model's (fast) tokenizer; runs one padded batch through the model."""

    def __init__(self, model: torch.nn.Module, tokens: PairTokenizer, device: torch.device, accelerator=None):
        self.model = model
        self.tokens = tokens
        self.device = device
        self.accelerator = accelerator if accelerator is not None and accelerator.num_processes > 1 else None

    @property
    def arch(self) -> str:
        return self.model.cfg.arch

    def tokenize(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Encoded]:
        if pairs is not None:
            return [e[0] for e in self.tokens.encode_pairs(texts, pairs)]
        return self.tokens.encode_texts(texts)

    def batch_fn(self, fn: Callable[..., torch.Tensor]) -> Callable[[list[Encoded]], np.ndarray]:
        """``fn`` (the model's forward, or another function of a padded batch) as a forward of rows."""
        @torch.inference_mode()
        def forward(batch: list[Encoded]) -> np.ndarray:
            out = fn(**{k: v.to(self.device) for k, v in self.tokens.pad(batch).items()})
            return out.float().cpu().numpy().reshape(len(batch), -1)
        return forward

    def forward(self, batch: list[Encoded]) -> np.ndarray:
        return self.batch_fn(self.model if architecture(self.arch).joint else self.model.embed)(batch)

    def map_batches(self, batches: list[list], forward: Callable[[list], np.ndarray]) -> list[np.ndarray]:
        """In eval mode (restored after); sharded over the processes of a distributed run."""
        was_training = self.model.training
        self.model.eval()
        try:
            if self.accelerator is None:
                return [forward(b) for b in batches]
            return self._sharded(batches, forward)
        finally:
            self.model.train(was_training)

    def _sharded(self, batches: list[list], forward: Callable[[list], np.ndarray]) -> list[np.ndarray]:
        from accelerate.utils import gather_object

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        rounds = -(-len(batches) // world)
        mine = []
        for r in range(rounds):
            i = r * world + rank
            rows = forward(batches[i] if i < len(batches) else batches[0])  # a repeat keeps forwards even
            if i < len(batches):
                mine.append((i, rows))
        return [rows for _, rows in sorted(gather_object(mine), key=lambda x: x[0])]


class Predictor(PairScorer):
    """A PyTorch model on the one scoring path: scores on the label scale's user side."""

    def __init__(self, model: torch.nn.Module, tokens: PairTokenizer, labels: LabelScale | None,
                 batch_size: int = 128, device: torch.device | str = "cpu", accelerator=None):
        offset, scale = (labels.offset, labels.scale) if labels is not None else (0.0, 1.0)
        super().__init__(TorchEngine(model, tokens, torch.device(device), accelerator), offset, scale, batch_size)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def run_batches(self, items: list[Encoded], fn: Callable[..., torch.Tensor]) -> np.ndarray:
        """``fn`` of each padded, length-sorted batch of ``items``; rows in input order."""
        return self.run(items, forward=self.engine.batch_fn(fn))
