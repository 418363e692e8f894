"""First-use self-check of the fused adapter kernel: it serves only where it has been shown right.

The kernel's tests run under Triton's interpreter on CPUs; a GPU, driver or Triton release they
never met may compile it differently, or not at all. So before the fused path serves a class of
calls (device, dtype, hidden size, bottleneck width, activation, residual kind) in a process, it
runs forward and backward once on random inputs and is compared with the PyTorch reference in
float64, at the tolerances of the kernel tests. A failure to compile or run, or a drift beyond
them, sends that class to PyTorch with one warning line; every verdict is kept for the run's records.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass

import torch

from . import adapter_bottleneck as ab

# (atol relative to the largest reference value, rtol): the tolerances of tests/test_kernels.py.
# bf16 keeps 8 significant bits and every dot input is rounded to it, as eager does; fp16 keeps 11.
TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (1e-2, 1e-2)}
CHECK_ROWS = 130  # not a multiple of the kernel's 64-row block: the masked tail is checked too


@dataclass(frozen=True)
class CallClass:
    """What can change how the kernel compiles or behaves, short of the number of rows."""

    device: str
    dtype: torch.dtype
    hidden: int
    bottleneck: int
    activation: str
    separate_residual: bool

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        residual = "residual" if self.separate_residual else "residual=x"
        return f"{self.device} {dtype} H={self.hidden} r={self.bottleneck} {self.activation} {residual}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


_verdicts: dict[CallClass, Verdict] = {}
_lock = threading.Lock()


def verdict(call: CallClass) -> Verdict:
    """The self-check's verdict for ``call``, run on first use (once per process)."""
    found = _verdicts.get(call)
    if found is not None:
        return found
    with _lock:
        if call not in _verdicts:
            _verdicts[call] = found = _check(call)
            if not found.ok:
                sys.stderr.write(f"warning: fused adapter kernel not used for {call.describe()}: {found.reason}; "
                                 "PyTorch runs these layers instead\n")
                sys.stderr.flush()
        return _verdicts[call]


def verdicts() -> dict[CallClass, Verdict]:
    return dict(_verdicts)


def _inputs(call: CallClass) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(call.device, call.dtype)

    H, r = call.hidden, call.bottleneck
    x, residual = rand(CHECK_ROWS, H), rand(CHECK_ROWS, H) if call.separate_residual else None
    return [x, residual, rand(r, H, scale=H ** -0.5), rand(r, scale=0.5), rand(H, r, scale=r ** -0.5),
            rand(H, scale=0.5), rand(CHECK_ROWS, H)]


def _check(call: CallClass) -> Verdict:
    if call.dtype == torch.float32 and call.device.startswith("cuda"):
        return Verdict(False, "float32 on a GPU: cuBLAS beats the kernel's IEEE float32 dots (0.4-0.8x eager "
                              "on an H200, RESULTS.md); it serves bf16/fp16 (mixed precision)")
    names = ("y", "dx", "dW_down", "db_down", "dW_up", "db_up")
    try:
        x, residual, *weights, dy = _inputs(call)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(call.device.split(":")[0],
                                                                                enabled=False):
            leaves = [t.clone().requires_grad_() for t in (x, *weights)]
            y = ab.FusedAdapterFunction.apply(leaves[0], residual, *leaves[1:], 0.75, call.activation)
            y.backward(dy)
            got = [y.detach(), *(t.grad for t in leaves)]
            ref = [t.detach().double().cpu().requires_grad_() for t in (x, *weights)]
            y_ref = ab.adapter_bottleneck_reference(ref[0], None if residual is None else residual.double().cpu(),
                                                    *ref[1:], 0.75, call.activation)
            y_ref.backward(dy.double().cpu())
            want = [y_ref.detach(), *(t.grad for t in ref)]
    except Exception as e:  # a compile error, a launch failure, an unsupported dtype: not this class
        text = str(e).strip().splitlines()
        return Verdict(False, f"failed to run ({type(e).__name__}: {text[0][:160] if text else ''})")
    atol, rtol = TOLERANCE.get(call.dtype, TOLERANCE[torch.bfloat16])
    worst = 0.0
    for name, g, w in zip(names, got, want):
        g = g.double().cpu()
        if g.shape != w.shape or not torch.isfinite(g).all():
            return Verdict(False, f"{name} is not finite or has the wrong shape")
        allowed = atol * w.abs().max().item() + rtol * w.abs()
        excess = ((g - w).abs() / allowed.clamp(min=1e-300)).max().item()
        if excess > 1:
            err = (g - w).abs().max().item()
            return Verdict(False, f"{name} drifts from the PyTorch reference (max error {err:.2e}, "
                                  f"{excess:.1f}x the tolerance)")
        worst = max(worst, excess)
    return Verdict(True, f"matches the PyTorch reference (forward and backward; worst error {worst:.2f}x "
                         "the tolerance)")
