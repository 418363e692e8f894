"""The bi-/cross-encoder difference, in one place: how a pair is encoded, what the model outputs and
how a score comes of it, which losses train it, and what other libraries call it. Every other module
asks ``architecture`` (no torch here: bundles score without it).

cross: the pair is encoded jointly; a head (one output) regresses the normalised score.
bi:    each sentence is encoded alone and mean-pooled; the score is the cosine of the two embeddings,
       mapped onto the declared score range.
"""
from __future__ import annotations

from dataclasses import dataclass

from toolkit.common.choices import CROSS_LOSSES, RANK_LOSSES


@dataclass(frozen=True)
class Architecture:
    name: str
    joint: bool  # the pair is one input sequence with a head on it (cross); else each sentence alone (bi)
    losses: tuple[str, ...]  # the losses it trains with
    output_kind: str  # what a forward pass returns per input row (the bundle's graph output)
    zero_point: str  # what WiSE-FT's α = 0 is for it
    st_class: str  # sentence-transformers' class that loads its exported folder
    hf_auto_class: str  # transformers' auto class of its merged model

    @property
    def has_head(self) -> bool:
        return self.joint

    @property
    def needs_range(self) -> bool:
        """The cosine (-1..1) maps onto a declared score range; a head learns any scale."""
        return not self.joint


ARCHITECTURES = {a.name: a for a in (
    Architecture("bi", joint=False, losses=("mse", *RANK_LOSSES), output_kind="embedding", zero_point="zero-shot",
                 st_class="SentenceTransformer", hf_auto_class="AutoModel"),
    Architecture("cross", joint=True, losses=CROSS_LOSSES, output_kind="normalized_score",
                 zero_point="linear probe", st_class="CrossEncoder",
                 hf_auto_class="AutoModelForSequenceClassification"),
)}


def architecture(name: str) -> Architecture:
    return ARCHITECTURES[name]
