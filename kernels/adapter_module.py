"""The fused bottleneck as a drop-in for the ``adapters`` library's ``Adapter`` layer.

``fuse_adapters`` re-classes each supported ``Adapter`` in place as ``FusedBottleneckAdapter``: same
parameters, same state-dict keys, so saving and loading stay in the adapters format and
``unfuse_adapters`` restores the original. The library has no hook for a custom bottleneck
implementation; re-classing is how its layers keep every other behaviour (composition, saving).
"""
from __future__ import annotations

import torch
from adapters.methods.modeling import Adapter
from torch import nn

from .adapter_bottleneck import fused_adapter_bottleneck, kernels_available
from .selfcheck import CallClass, verdict

# transformers' activation classes (what adapters' Activation_Function_Class wraps) -> kernel names;
# GELUActivation is the exact (erf) GELU whether it runs torch's or its Python implementation
_ACTIVATION_BY_CLASS = {"ReLU": "relu", "SiLU": "silu", "SiLUActivation": "silu", "GELUActivation": "gelu",
                        "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh", "Tanh": "tanh"}


def adapter_activation(adapter: Adapter) -> str | None:
    """The kernel's name for this layer's activation (None: not one the kernel has)."""
    f = getattr(adapter.non_linearity, "f", None)
    if isinstance(f, nn.GELU):
        return "gelu_tanh" if f.approximate == "tanh" else "gelu"
    return _ACTIVATION_BY_CLASS.get(type(f).__name__)


def fusable(adapter: nn.Module) -> str | None:
    """Why this layer cannot be fused (None: it can). Only plain bottlenecks: Linear, activation,
    Linear, float scaling, residual; layer norms, gating, PHM layers, learned scaling and stochastic
    depth stay with the library."""
    if type(adapter) not in (Adapter, FusedBottleneckAdapter):  # e.g. ParallelAdapter: another forward
        return "not a sequential bottleneck Adapter"
    if adapter.add_layer_norm_before or adapter.add_layer_norm_after:
        return "adapter layer norm"
    if adapter.use_gating:
        return "gating"
    if not isinstance(adapter.scaling, float):
        return "learned scaling"
    if hasattr(adapter, "DropPath"):
        return "stochastic depth"
    down = list(adapter.adapter_down)
    if len(down) != 2 or type(down[0]) is not nn.Linear or type(adapter.adapter_up) is not nn.Linear:
        return "not Linear-activation-Linear"
    if down[0].out_features > 128:
        return "bottleneck wider than 128"
    if adapter_activation(adapter) is None:
        return f"activation {type(adapter.non_linearity.f).__name__}"
    return None


class FusedBottleneckAdapter(Adapter):
    """``Adapter`` whose forward runs the fused kernel where it can (CUDA, or the Triton interpreter)
    and has passed its self-check for this kind of call, and the library's own forward where not
    (CPU tensors, dropout while training, gating output, a failed self-check)."""

    def forward(self, x, residual_input, output_gating=False):
        if output_gating or (self.training and self.dropout.p > 0) or not kernels_available(x.device):
            return super().forward(x, residual_input, output_gating)
        down = self.adapter_down[0]
        up = self.adapter_up
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        cast = [t if t.dtype == dtype else t.to(dtype) for t in (x, down.weight, down.bias, up.weight, up.bias)]
        # The residual is read once when it is x itself and x needs no cast (as in double_seq_bn);
        # otherwise it is read in its own dtype, as eager autocast would add it.
        residual = None if residual_input is x and cast[0] is x else residual_input
        call = CallClass(str(x.device), dtype, down.in_features, down.out_features, adapter_activation(self),
                         residual is not None)
        if not verdict(call).ok:
            return super().forward(x, residual_input, output_gating)
        with torch.autocast(x.device.type, enabled=False):
            out = fused_adapter_bottleneck(cast[0], residual, *cast[1:], self.scaling, adapter_activation(self))
        return out, None, None  # down/up activations are only read by Fuse compositions (not fused)


def fuse_adapters(model: nn.Module) -> int:
    """Re-class every fusable ``Adapter`` in ``model``; returns how many were."""
    count = 0
    for module in model.modules():
        if type(module) is Adapter and fusable(module) is None:
            module.__class__ = FusedBottleneckAdapter
            count += 1
    return count


def unfuse_adapters(model: nn.Module) -> int:
    count = 0
    for module in model.modules():
        if type(module) is FusedBottleneckAdapter:
            module.__class__ = Adapter
            count += 1
    return count
