"""Tokenised pairs, dynamically padded batches, and length-grouped batch order."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from toolkit.model.architectures import architecture


@dataclass
class Encoded:
    """Token ids of one text (a pair for cross-encoders, one sentence for bi-encoders)."""

    input_ids: list[int]
    token_type_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


class PairTokenizer:
    """Tokenises once, pads per batch: cross-encoders see ``[CLS] s1 [SEP] s2 [SEP]``,
    bi-encoders each sentence alone."""

    def __init__(self, tokenizer, arch: str, max_length: int):
        self.tokenizer = tokenizer
        self.arch = arch
        self.joint = architecture(arch).joint
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _encode(self, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> list[Encoded]:
        enc = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                             max_length=self.max_length, return_token_type_ids=True,
                             return_attention_mask=False)
        return [Encoded(i, t) for i, t in zip(enc["input_ids"], enc["token_type_ids"])]

    def encode_pairs(self, s1: Sequence[str], s2: Sequence[str]) -> list[tuple[Encoded, ...]]:
        if self.joint:
            return [(e,) for e in self._encode(s1, s2)]
        return list(zip(self._encode(s1), self._encode(s2)))

    def encode_texts(self, texts: Sequence[str]) -> list[Encoded]:
        return self._encode(texts)

    def pad(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e) for e in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        types = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, e in enumerate(items):
            n = len(e)
            ids[row, :n] = torch.tensor(e.input_ids)
            types[row, :n] = torch.tensor(e.token_type_ids)
            mask[row, :n] = 1
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}

    def collate(self, examples: Sequence[tuple[tuple[Encoded, ...], float, float, int]]) -> dict[str, torch.Tensor]:
        """A training batch; bi-encoder batches stack all first sentences, then all second ones.
        ``weights`` and ``index`` say what each row counts for (see ``LengthGroupedBatchSampler``)."""
        texts = [e for enc, *_ in examples for e in enc] if self.joint else \
            [enc[0] for enc, *_ in examples] + [enc[1] for enc, *_ in examples]
        batch = self.pad(texts)
        batch["labels"] = torch.tensor([y for _, y, _, _ in examples], dtype=torch.float32)
        batch["weights"] = torch.tensor([w for _, _, w, _ in examples], dtype=torch.float64)
        batch["index"] = torch.tensor([i for _, _, _, i in examples], dtype=torch.long)
        return batch


class Draw(NamedTuple):
    """One slot of a global batch: a training pair and its weight in its optimiser step's loss."""

    index: int
    weight: float  # 1 / (pairs in the optimiser step); 0 for a slot that only fills the batch


class PairDataset(Dataset):
    def __init__(self, encoded: list[tuple[Encoded, ...]], targets: np.ndarray):
        self.encoded = encoded
        self.targets = targets.astype(np.float64)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, draw: Draw):
        return self.encoded[draw.index], float(self.targets[draw.index]), draw.weight, draw.index

    def lengths(self) -> list[int]:
        return [max(len(e) for e in enc) for enc in self.encoded]


class LengthGroupedBatchSampler(Sampler[list[Draw]]):
    """Shuffled global batches of similar length (little padding), each pair drawn once an epoch.

    As in transformers' LengthGroupedSampler: shuffle, cut into mega-batches of ``mega`` batches,
    sort each by length, cut into batches; then shuffle the batch order. Order depends only on
    (seed, epoch), so a resumed or distributed run sees the same batches.

    Every batch has exactly ``batch_size`` slots: a short one (wherever the shuffle puts it) is
    filled with repeats of its own pairs at weight 0. accelerate shards a batch sampler by handing
    each process a slice of every *full* batch; a short batch in mid-epoch would be dropped and a
    short last one padded with repeats that count. A pair's weight is 1 / (pairs in its optimiser
    step: ``accumulation`` consecutive batches, the epoch's last step possibly fewer), so the
    weighted loss sum, times processes x accumulation (undoing DDP's and accelerate's averaging), is
    the mean over the step's pairs: the same step for any number of processes.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool = True,
                 mega: int = 50, accumulation: int = 1):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size  # read by accelerate's sharding
        self.seed = seed
        self.group_by_length = group_by_length
        self.mega = mega
        self.accumulation = accumulation
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def batches(self) -> list[list[int]]:
        """This epoch's batches of pair indices, without the filling."""
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        if self.group_by_length:
            size = self.mega * self.batch_size
            parts = [perm[i:i + size] for i in range(0, len(perm), size)]
            perm = np.concatenate([p[np.argsort(-self.lengths[p], kind="stable")] for p in parts])
        batches = [perm[i:i + self.batch_size].tolist() for i in range(0, len(perm), self.batch_size)]
        if self.group_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[Draw]]:
        batches = self.batches()
        for start in range(0, len(batches), self.accumulation):
            step = batches[start:start + self.accumulation]
            weight = 1.0 / sum(len(b) for b in step)
            for batch in step:
                fill = [batch[k % len(batch)] for k in range(self.batch_size - len(batch))]
                yield [Draw(i, weight) for i in batch] + [Draw(i, 0.0) for i in fill]
