"""Training objectives: what one micro-batch's predictions cost, weighted as the sampler says.

``mse``: each pair's squared error against its normalised target, at the pair's weight
(``LengthGroupedBatchSampler``: 1 / pairs in the optimiser step, 0 for a slot that only fills a
batch), so that a step's loss is the mean over its pairs on any number of processes.

``bce`` (cross-encoders): binary cross-entropy of the head's logit against the score scaled to 0..1,
weighted per pair as ``mse``; the model then ends in a sigmoid (sentence-transformers' CrossEncoder
default for similarity: its BinaryCrossEntropyLoss on the same logits).

``cosent`` and ``angle`` (bi-encoders): rank losses over the pairs of a batch,
``log(1 + Σ_{y_i > y_j} exp(λ (s_j - s_i)))``, λ = 20, where s is the cosine of the two embeddings
(CoSENT: Su 2022, Huang et al. 2024) or AnglE's normalised angle difference in complex space (Li &
Li, ACL 2024), as sentence-transformers' CoSENTLoss and AnglELoss compute them (the tests compare the
values on the same batch). Only the order of the targets enters, so every target normalisation gives
the same loss. Written here rather than imported because ours must skip the filler slots and weigh
each micro-batch by its share of the optimiser step (its pairs' weights summed): on one process
without accumulation that is sentence-transformers' loss exactly. On several processes each holds a
slice of the global batch; ranking only its slice would compare fewer pairs than one process does,
so the similarities (differentiably), targets and weights are gathered and every process computes
the loss of the whole global batch. Each process then backpropagates its own weights' sum times
that loss: the gather's backward sums the processes' gradients for every slot, so each slot gets
(Σ over processes of their weight sums = the global batch's share) x the loss's gradient, and the
loop's loss scale (processes x accumulation, undoing DDP's and accelerate's averaging) makes the
step's gradient the one process's, as for MSE.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from toolkit.common.choices import RANK_LOSSES

SCALE = 20.0  # λ, the inverse temperature of both rank losses (sentence-transformers' default)
# what the model's forward must return for each loss (model.PairRegressor.forward's ``output``)
OUTPUT = {"mse": "score", "cosent": "score", "angle": "angle", "bce": "logit"}


def angle_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """AnglE's similarity of each row of ``a`` with the same row of ``b``: each embedding read as a
    complex vector (first half real, second half imaginary), |Σ of the normalised quotient's parts|."""
    if a.shape[-1] % 2:
        a, b = F.pad(a, (0, 1)), F.pad(b, (0, 1))
    re_a, im_a = a.chunk(2, dim=-1)
    re_b, im_b = b.chunk(2, dim=-1)
    norm_b = (re_b ** 2 + im_b ** 2).sum(-1, keepdim=True)
    re = (re_a * re_b + im_a * im_b) / norm_b
    im = (im_a * re_b - re_a * im_b) / norm_b
    ratio = (re_a ** 2 + im_a ** 2).sum(-1, keepdim=True).sqrt() / norm_b.sqrt()
    return (torch.cat((re, im), dim=-1) / ratio).sum(-1).abs()


def rank_loss(similarities: torch.Tensor, targets: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """``log(1 + Σ_{y_i > y_j} exp(scale (s_j - s_i)))`` over the pairs given (0 when no two targets differ)."""
    s = similarities * scale
    diff = s[None, :] - s[:, None]  # [i, j] = s_j - s_i
    ordered = targets[:, None] > targets[None, :]  # y_i > y_j
    terms = diff[ordered]
    return torch.logsumexp(torch.cat((terms.new_zeros(1), terms)), dim=0)


def batch_objective(loss: str, predictions: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the micro-batch's part of the step's loss, to backpropagate; the sum over its counted pairs of
    their loss, for the logs: per pair for mse, the batch's loss times its pairs for the rank losses).
    ``gather``: with several processes, every process's slice of the global batch concatenated,
    differentiably (``distributed.gather_with_grad``); the rank losses rank the whole global batch
    (see the module docstring), and every process must call then."""
    counted = weights > 0
    if loss in ("mse", "bce"):
        per_pair = F.mse_loss(predictions, targets, reduction="none") if loss == "mse" else \
            F.binary_cross_entropy_with_logits(predictions, targets, reduction="none")
        return (per_pair * weights).sum(), per_pair.detach()[counted].sum()
    if loss not in RANK_LOSSES:
        raise ValueError(f"unknown loss {loss!r}")
    everyone, their_targets, their_weights = predictions, targets, weights
    if gather is not None:
        everyone = gather(predictions)
        their_targets, their_weights = gather(torch.stack((targets, weights.to(targets.dtype)), dim=1)).unbind(1)
    value = rank_loss(everyone[their_weights > 0], their_targets[their_weights > 0])
    # this process's weights: the gather's backward adds the other processes' shares of the batch
    return weights.sum() * value, value.detach() * counted.sum()
