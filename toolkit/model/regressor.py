"""The pair regressor: a pretrained encoder with an adapter, as a cross- or bi-encoder.

cross: the pair is encoded jointly and the adapters library's classification head (one output),
       on the [CLS] state or the mean of the token states (``pooling``), regresses the normalised
       score; with a sigmoid after it (``head_activation``), as sentence-transformers' CrossEncoder
       trains with BCE on scores scaled to 0..1.
bi:    each sentence is encoded alone and mean-pooled; the score is the cosine of the two
       embeddings, trained with MSE against the score mapped to 0..1 (sentence-transformers'
       CosineSimilarityLoss), or by ranking the batch's pairs (CoSENT, AnglE: losses.py). With the
       adapter at its initial (identity) weights, or switched off, this is exactly the pre-trained
       sentence embedding model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from toolkit.common.errors import ToolkitError
from toolkit.model.adapter_kinds import adapter_kind, fused_kinds
from toolkit.model.architectures import architecture
from toolkit.model.config import ModelConfig
from toolkit.model.losses import angle_similarity
from toolkit.model.safe_loading import load_adapter_model

NAME = "pair"  # the adapter's and the head's name inside the adapters library
FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = ("adapter.safetensors",)
HEAD_WEIGHTS = "model_head.safetensors"


def fused_kernel_choice(mode: str) -> tuple[bool, str]:
    """(fuse?, why). ``auto``: where the kernel runs natively (CUDA and Triton); each kind of call
    then passes a self-check first (kernels/selfcheck.py). ``on`` also accepts the Triton
    interpreter on the CPU (TRITON_INTERPRET=1: slow, for tests)."""
    if mode == "off":
        return False, "off (--fused-kernel off)"
    try:
        import triton  # noqa: F401
    except ImportError:
        if mode == "on":
            raise ToolkitError("--fused-kernel on needs Triton (it comes with CUDA builds of torch)") from None
        return False, "off (Triton is not installed)"
    if torch.cuda.is_available():
        return True, f"on ({mode}: CUDA and Triton), each kind of call self-checked at first use"
    if mode == "on":
        from toolkit.kernels.adapter_bottleneck import interpreting

        if not interpreting():
            raise ToolkitError("--fused-kernel on needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernel "
                               "on the CPU, slowly, for testing)")
        return True, "on (Triton interpreter), each kind of call self-checked at first use"
    return False, "off (auto: no CUDA device)"


def kernel_report(model: "PairRegressor") -> dict:
    """Which path the bottleneck layers take, and why: for the run's log and metrics.json."""
    fused = 0
    decisions: list[str] = []
    if model.kernel_choice[0]:
        from toolkit.kernels.adapter_module import FusedBottleneckAdapter
        from toolkit.kernels.selfcheck import verdicts

        fused = sum(isinstance(m, FusedBottleneckAdapter) for m in model.modules())
        decisions = [f"{call.describe()}: {'fused kernel' if v.ok else 'PyTorch'} ({v.reason})"
                     for call, v in verdicts().items()]
    return {"requested": model.cfg.fused_kernel, "choice": model.kernel_choice[1], "fused_layers": fused,
            "decisions": decisions}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class PairRegressor(nn.Module):
    """Maps a batch to normalised scores (the unit the loss is computed in)."""

    def __init__(self, encoder: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.kernel_choice: tuple[bool, str] = (False, "off")

    @classmethod
    def create(cls, cfg: ModelConfig, base_folder: Path, weights: Optional[Path] = None) -> "PairRegressor":
        """A fresh model (``weights`` None) or one restored from a run directory's weights."""
        cfg.validate()
        cross = architecture(cfg.arch).has_head
        kind = adapter_kind(cfg.adapter)
        encoder = load_adapter_model(base_folder, cfg.trust_remote_code, plain_ok=kind.full and not cross)
        if kind.full:
            if cross:
                encoder.add_classification_head(NAME, num_labels=1, layers=cfg.head_layers)
            if weights is not None:
                _load_full(encoder, weights / FULL_WEIGHTS)
        else:
            if weights is None:
                encoder.add_adapter(NAME, config=kind.library_config(cfg))
                if cross:
                    encoder.add_classification_head(NAME, num_labels=1, layers=cfg.head_layers)
            else:
                _require(weights, [*ADAPTER_WEIGHTS, "adapter_config.json"] +
                         ([HEAD_WEIGHTS, "head_config.json"] if cross else []))
                encoder.load_adapter(str(weights), use_safetensors=True, with_head=cross)
            encoder.train_adapter(NAME)  # freezes the encoder, leaves adapter and head trainable
        if cross:
            encoder.active_head = NAME
        base = getattr(encoder, "base_model", encoder)
        pooler = getattr(base, "pooler", None)
        if pooler is not None:  # unused by both architectures: keep it out of the optimiser (and DDP)
            pooler.requires_grad_(False)
        if cfg.dropout is not None:
            for module in encoder.modules():
                if isinstance(module, nn.Dropout):
                    module.p = cfg.dropout
                if isinstance(getattr(module, "dropout_prob", None), float):  # SDPA attention keeps a float
                    module.dropout_prob = cfg.dropout
        choice = fused_kernel_choice(cfg.fused_kernel)
        if choice[0]:
            from toolkit.kernels.adapter_module import fuse_adapters

            if fuse_adapters(encoder) == 0:
                if cfg.fused_kernel == "on":
                    raise ToolkitError(f"--fused-kernel on: adapter {cfg.adapter} has no bottleneck layers the "
                                       f"kernel fuses ({' and '.join(fused_kinds())} do)")
                choice = (False, f"off (adapter {cfg.adapter} has no bottleneck layers the kernel fuses)")
        model = cls(encoder, cfg)
        model.kernel_choice = choice
        model.eval()
        return model

    @property
    def config(self):
        """The encoder's config (DeepSpeed's "auto" bucket sizes read ``hidden_size`` from it)."""
        return self.encoder.config

    # -- forward -------------------------------------------------------------------------------
    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # MPNet has none
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types)
        return mean_pool(out[0], attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None,
                output: str = "score") -> torch.Tensor:
        """Normalised scores (``output`` "score"); what a training loss takes instead (losses.OUTPUT):
        "angle", a bi-encoder's AnglE similarity, or "logit", a cross-encoder's head before its sigmoid."""
        if architecture(self.cfg.arch).has_head:
            if self.cfg.pooling == "mean":  # the library's head reads [CLS] unless given its input
                hidden = self.encoder.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                                 token_type_ids=token_type_ids)[0]
                logits = self.encoder.heads[NAME]((hidden,), cls_output=mean_pool(hidden, attention_mask))[0]
            else:
                logits = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids).logits
            logits = logits[:, 0].float()
            if self.cfg.head_activation == "sigmoid" and output != "logit":
                return torch.sigmoid(logits)
            return logits
        emb = self.embed(input_ids, attention_mask, token_type_ids)
        a, b = emb.float().chunk(2)
        if output == "angle":
            return angle_similarity(a, b)
        return F.cosine_similarity(a, b, dim=-1)

    # -- parameters ----------------------------------------------------------------------------
    def parameter_counts(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}

    # -- weights -------------------------------------------------------------------------------
    def save_weights(self, folder: Path) -> None:
        """Only what training changed: the adapter (+ head) in the adapters library's format,
        or every weight for full fine-tuning; safetensors in both cases."""
        folder.mkdir(parents=True, exist_ok=True)
        if adapter_kind(self.cfg.adapter).full:
            save_model(self.encoder, str(folder / FULL_WEIGHTS))  # handles tied tensors
        else:
            self.encoder.save_adapter(str(folder), NAME, with_head=architecture(self.cfg.arch).has_head,
                                     use_safetensors=True)


def _require(folder: Path, names: list[str]) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise ToolkitError(f"{folder}: missing {name} (pickled weights are never loaded)")


def _load_full(encoder: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise ToolkitError(f"{path.parent}: missing {path.name}")
    missing, unexpected = load_model(encoder, str(path), strict=False)
    if missing or unexpected:
        raise ToolkitError(f"{path}: does not match the model (missing {len(missing)}, unexpected "
                           f"{len(unexpected)} tensors, e.g. {(missing or unexpected)[0]})")
