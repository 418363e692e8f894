"""What model to build (``ModelConfig``), apart from the model code: the CLI, config files and the
launch checks read it without importing torch (seconds of every command's start, errors included)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from toolkit.common.choices import Adapter, Arch, HeadActivation, Pooling
from toolkit.common.errors import ToolkitError
from toolkit.common.option_types import Bounds, Count, Positive, Share, check_options
from toolkit.model.architectures import architecture
from toolkit.model.known_models import DEFAULT_MODEL


@dataclass
class ModelConfig:
    """What to build; saved in the run directory, so later commands take no model options."""

    base_model: str = DEFAULT_MODEL  # short name or local model folder
    arch: Arch = "bi"  # bi: cosine of two embeddings; cross: joint encoding + head
    adapter: Adapter = "seq_bn"  # adapter type; none = full fine-tuning
    reduction_factor: Optional[Positive] = None
    """bottleneck adapters: hidden size / bottleneck width (default: library's)"""
    lora_r: Count = 8  # LoRA rank
    lora_alpha: Optional[float] = None  # LoRA alpha (default: equal to the rank: scaling 1)
    max_length: Annotated[int, Bounds(8)] = 128  # tokens per input
    head_layers: int = 2  # cross-encoders: layers of the regression head
    pooling: Optional[Pooling] = None  # cross-encoders: what the head reads, the [CLS] state (default) or the mean
    head_activation: Optional[HeadActivation] = None
    """cross-encoders: the head's output function (default: sigmoid when trained with --loss bce, else identity)"""
    dropout: Optional[Share] = None  # rate of every dropout layer (default: the model's own, 0.1 for BERT)
    fused_kernel: Literal["auto", "on", "off"] = "auto"
    """Triton kernel for bottleneck adapters (auto: on with a CUDA GPU and Triton)"""
    trust_remote_code: bool = False  # allow a model folder's own code (auto_map)

    def validate(self) -> None:
        check_options(self)
        if not architecture(self.arch).has_head and (self.pooling is not None or self.head_activation is not None):
            raise ToolkitError("--pooling and --head-activation are for cross-encoders' head: a bi-encoder mean-pools "
                               "each sentence and scores the cosine")
