"""What each adapter kind is, in one place: how the adapters library builds it, its default learning
rate, whether it folds into the base weights, whether the fused kernel takes its layers, how WiSE-FT
interpolates it and which of its sizes a search varies. Every other module asks ``adapter_kind``.

Bottleneck adapters start as the identity (up-projection zero, the library's "mam_adapter" init),
as LoRA (B = 0) and IA3 (scales = 1) do: training starts from the pre-trained model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from toolkit.model.config import ModelConfig

# Learning rates found on STS-B dev (benchmarks/RESULTS.md): adapters want ~50x full fine-tuning's.
ADAPTER_LR, FULL_LR = 1e-3, 2e-5


@dataclass(frozen=True)
class AdapterKind:
    name: str
    build: Optional[Callable[["ModelConfig"], Any]]  # the adapters library's config; None: full fine-tuning
    lr: float = ADAPTER_LR  # default learning rate
    folds: bool = False  # merges into the base weights (`toolkit merge`: a plain transformers model)
    fused: bool = False  # has bottleneck layers the Triton kernel fuses
    searched: tuple[str, ...] = ()  # ModelConfig fields `toolkit search` varies for it
    kept_trained: tuple[str, ...] = ()  # weight-name suffixes WiSE-FT keeps at their trained value
    between_runs: bool = True  # WiSE-FT may interpolate two runs' weights (not LoRA: no LoRA of the same rank)

    @property
    def full(self) -> bool:
        """Full fine-tuning: every weight trains, is saved, and starts from the base model's."""
        return self.build is None

    def library_config(self, cfg: "ModelConfig") -> Any:
        if self.build is None:
            raise ValueError(f"adapter {self.name}: full fine-tuning has no adapter config")
        return self.build(cfg)

    def size(self, cfg: "ModelConfig", name: str) -> Any:
        """A searched size as this model has it (the library's default where the config leaves it None)."""
        value = getattr(cfg, name)
        return value if value is not None else getattr(self.library_config(cfg), name)


def _bottleneck(config_class: str, identity_init: bool = True) -> Callable[["ModelConfig"], Any]:
    def build(cfg: "ModelConfig") -> Any:
        import adapters

        options = {} if cfg.reduction_factor is None else {"reduction_factor": cfg.reduction_factor}
        if identity_init:
            options["init_weights"] = "mam_adapter"
        return getattr(adapters, config_class)(**options)
    return build


def _lora(cfg: "ModelConfig") -> Any:
    import adapters

    return adapters.LoRAConfig(r=cfg.lora_r, alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_r)


def _ia3(cfg: "ModelConfig") -> Any:
    import adapters

    return adapters.IA3Config()


KINDS = {k.name: k for k in (
    AdapterKind("seq_bn", _bottleneck("SeqBnConfig"), fused=True, searched=("reduction_factor",)),
    AdapterKind("double_seq_bn", _bottleneck("DoubleSeqBnConfig"), fused=True, searched=("reduction_factor",)),
    AdapterKind("par_bn", _bottleneck("ParBnConfig", identity_init=False), searched=("reduction_factor",)),
    AdapterKind("lora", _lora, folds=True, searched=("lora_r",), kept_trained=("lora_A",), between_runs=False),
    AdapterKind("ia3", _ia3, folds=True),
    AdapterKind("none", None, lr=FULL_LR, folds=True),
)}


def adapter_kind(name: str) -> AdapterKind:
    return KINDS[name]


def fused_kinds() -> list[str]:
    return [k.name for k in KINDS.values() if k.fused]
