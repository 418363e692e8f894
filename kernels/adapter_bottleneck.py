"""Fused bottleneck adapter: ``y = residual + scale * (act(x @ W_down^T + b_down) @ W_up^T + b_up)``.

PyTorch runs this as five kernels, each reading and writing a T x H tensor; at bottleneck widths
r <= 64 the work is memory-bound, so one kernel that reads x (and the residual) once and writes y
once is the floor. Laid out as Liger-Kernel does: Triton kernels, host functions that check shapes,
allocate and launch, a ``torch.autograd.Function``, and a pure-PyTorch reference of the same
function (the CPU fallback and the tests' ground truth). The module that swaps it into the
``adapters`` library's layers is in ``adapter_module.py``.

Backward keeps the pre-activation ``z`` (T x r, float32) from the forward instead of recomputing
it: recomputing costs another read of x (T x H), keeping it costs writing and reading T x r, which
is H/r = 6..128 times less traffic. The weight gradients are reduced over T in fixed-size slices
whose partial sums are added in a fixed order: deterministic, no atomics.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works; the kernels need Triton
    triton = None

ACTIVATIONS = ("relu", "silu", "gelu", "gelu_tanh", "tanh")
_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}


def reference_activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(z)
    if activation == "silu":
        return F.silu(z)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "tanh":
        return torch.tanh(z)
    raise ValueError(f"unsupported activation {activation!r} (supported: {', '.join(ACTIVATIONS)})")


def adapter_bottleneck_reference(x: torch.Tensor, residual: Optional[torch.Tensor], w_down: torch.Tensor,
                                 b_down: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor, scale: float,
                                 activation: str = "relu") -> torch.Tensor:
    """The same function in PyTorch; ``residual`` None means the residual is x itself."""
    up = F.linear(reference_activation(F.linear(x, w_down, b_down), activation), w_up, b_up)
    return (x if residual is None else residual) + scale * up


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_available(device: torch.device) -> bool:
    """Triton can run here: a CUDA tensor, or any tensor under the Triton interpreter (tests)."""
    return triton is not None and (device.type == "cuda" or interpreting())


if triton is not None:

    @triton.jit
    def _act(z, ACT: tl.constexpr):
        if ACT == 0:
            return tl.maximum(z, 0.0)
        elif ACT == 1:
            return z * tl.sigmoid(z)
        elif ACT == 2:
            return 0.5 * z * (1.0 + tl.math.erf(z * 0.7071067811865476))
        elif ACT == 3:
            inner = 0.7978845608028654 * (z + 0.044715 * z * z * z)
            return 0.5 * z * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
        else:
            return 2.0 * tl.sigmoid(2.0 * z) - 1.0

    @triton.jit
    def _act_grad(z, ACT: tl.constexpr):
        if ACT == 0:
            return tl.where(z > 0.0, 1.0, 0.0)
        elif ACT == 1:
            s = tl.sigmoid(z)
            return s * (1.0 + z * (1.0 - s))
        elif ACT == 2:
            cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
            return cdf + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
        elif ACT == 3:
            inner = 0.7978845608028654 * (z + 0.044715 * z * z * z)
            t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0
            d_inner = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
            return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * d_inner
        else:
            t = 2.0 * tl.sigmoid(2.0 * z) - 1.0
            return 1.0 - t * t

    @triton.jit
    def _dot(a, b, DOT: tl.constexpr):
        """DOT 0: the inputs' own precision (bf16/fp16 tensor cores);
        1: IEEE float32; 2: operands upcast to float32 first (the interpreter's dot mishandles bf16,
        numpy having none; exact, since a product of two bf16 values is exact in float32)."""
        if DOT == 2:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        elif DOT == 1:
            return tl.dot(a, b, input_precision="ieee")
        else:
            return tl.dot(a, b)

    @triton.jit
    def _rows_by_matrix(A, M, rows, row_ok, rr, r_ok, H, stride_h, stride_r, DOT: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
        """A[rows, :H] @ M, M an H x R matrix read with the given strides, streamed over H in blocks;
        float32 accumulator (BLOCK_T x BLOCK_R). The forward's x @ W_down^T and the backward's dy @ W_up."""
        acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            c_ok = cols < H
            a = tl.load(A + rows[:, None] * H + cols[None, :], mask=row_ok[:, None] & c_ok[None, :], other=0.0)
            m = tl.load(M + cols[:, None] * stride_h + rr[None, :] * stride_r, mask=c_ok[:, None] & r_ok[None, :],
                        other=0.0)
            acc += _dot(a.to(M.dtype.element_ty), m, DOT)
        return acc

    @triton.jit
    def _forward_kernel(X, RES, WD, BD, WU, BU, Y, Z, T, H, R, scale,
                        ACT: tl.constexpr, HAS_RES: tl.constexpr, STORE_Z: tl.constexpr, DOT: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
        """One program: BLOCK_T rows. Pass 1 streams x through W_down; pass 2 writes y block by block."""
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        rr = tl.arange(0, BLOCK_R)
        r_ok = rr < R
        acc = _rows_by_matrix(X, WD, rows, row_ok, rr, r_ok, H, 1, H, DOT, BLOCK_T, BLOCK_H, BLOCK_R)  # x @ W_down^T
        z = acc + tl.load(BD + rr, mask=r_ok, other=0.0).to(tl.float32)[None, :]
        if STORE_Z:
            tl.store(Z + rows[:, None] * R + rr[None, :], z, mask=row_ok[:, None] & r_ok[None, :])
        h = _act(z, ACT).to(WU.dtype.element_ty)  # padded r columns: act(0) = 0 for every activation
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            c_ok = cols < H
            mask = row_ok[:, None] & c_ok[None, :]
            wu_t = tl.load(WU + cols[None, :] * R + rr[:, None], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            up = _dot(h, wu_t, DOT)
            up += tl.load(BU + cols, mask=c_ok, other=0.0).to(tl.float32)[None, :]
            if HAS_RES:
                res = tl.load(RES + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
            else:  # the residual is x: read again, from L2 when the tile is still there
                res = tl.load(X + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
            y = res.to(tl.float32) + scale * up
            tl.store(Y + rows[:, None] * H + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_dx_kernel(DY, Z, WU, WD, DX, DZ, T, H, R, scale,
                            ACT: tl.constexpr, ADD_DY: tl.constexpr, DOT: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
        """dz = scale * (dy @ W_up) * act'(z);  dx = dz @ W_down (+ dy when the residual is x)."""
        rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        rr = tl.arange(0, BLOCK_R)
        r_ok = rr < R
        dh = _rows_by_matrix(DY, WU, rows, row_ok, rr, r_ok, H, R, 1, DOT, BLOCK_T, BLOCK_H, BLOCK_R)  # dy @ W_up
        z = tl.load(Z + rows[:, None] * R + rr[None, :], mask=row_ok[:, None] & r_ok[None, :], other=0.0)
        dz = scale * dh * _act_grad(z, ACT)
        tl.store(DZ + rows[:, None] * R + rr[None, :], dz, mask=row_ok[:, None] & r_ok[None, :])
        dz_c = dz.to(WD.dtype.element_ty)
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            c_ok = cols < H
            mask = row_ok[:, None] & c_ok[None, :]
            wd = tl.load(WD + rr[:, None] * H + cols[None, :], mask=r_ok[:, None] & c_ok[None, :], other=0.0)
            dx = _dot(dz_c, wd, DOT)
            if ADD_DY:
                dx += tl.load(DY + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(DX + rows[:, None] * H + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_dw_kernel(X, DY, Z, DZ, DWU, DWD, DBU, T, H, R, rows_per_slice,
                            ACT: tl.constexpr, DOT: tl.constexpr,
                            BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
        """Program (column block, T slice): partial sums over its rows, added up on the host in order.
        DWU[s] += dy^T @ act(z) (H x r), DWD[s] += x^T @ dz (H x r, i.e. dW_down transposed), DBU[s] += sum dy."""
        cols = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
        c_ok = cols < H
        s = tl.program_id(1)
        rr = tl.arange(0, BLOCK_R)
        r_ok = rr < R
        dwu = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
        dwd = tl.zeros([BLOCK_H, BLOCK_R], dtype=tl.float32)
        dbu = tl.zeros([BLOCK_H], dtype=tl.float32)
        start = s * rows_per_slice
        for t0 in range(start, start + rows_per_slice, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            row_ok = rows < T
            mask = row_ok[:, None] & c_ok[None, :]
            rmask = row_ok[:, None] & r_ok[None, :]
            dy = tl.load(DY + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(X.dtype.element_ty)
            x = tl.load(X + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
            z = tl.load(Z + rows[:, None] * R + rr[None, :], mask=rmask, other=0.0)
            h = tl.where(rmask, _act(z, ACT), 0.0).to(X.dtype.element_ty)
            dz = tl.load(DZ + rows[:, None] * R + rr[None, :], mask=rmask, other=0.0).to(X.dtype.element_ty)
            dwu += _dot(tl.trans(dy), h, DOT)
            dwd += _dot(tl.trans(x), dz, DOT)
            dbu += tl.sum(dy.to(tl.float32), axis=0)
        out = s * H * R + cols[:, None] * R + rr[None, :]
        omask = c_ok[:, None] & r_ok[None, :]
        tl.store(DWU + out, dwu, mask=omask)
        tl.store(DWD + out, dwd, mask=omask)
        tl.store(DBU + s * H + cols, dbu, mask=c_ok)


# Launch shape: rows and hidden columns per program, warps per program. Module-level so that
# benchmarks/gpu_suite.py can sweep them (``launch_shape``). Chosen by that sweep on an H200
# (64k tokens, H 384 and 768; RESULTS.md): for bf16/fp16, 128 columns made forward+backward
# 1.25-1.34x faster than 64 with the forward unchanged (±5%); 8 warps and 32 or 128 rows were no
# faster. float32 (IEEE dots, no tensor cores) ran 2x slower with 128 columns: it keeps 64.
BLOCK_T = 64
BLOCK_H = 128
BLOCK_H_FP32 = 64
NUM_WARPS = 4


@contextlib.contextmanager
def launch_shape(block_t: int, block_h: int, num_warps: int) -> Iterator[None]:
    """Launch every kernel with this shape inside the block (for tuning sweeps; not thread-safe)."""
    global BLOCK_T, BLOCK_H, BLOCK_H_FP32, NUM_WARPS
    saved = BLOCK_T, BLOCK_H, BLOCK_H_FP32, NUM_WARPS
    BLOCK_T, BLOCK_H, BLOCK_H_FP32, NUM_WARPS = block_t, block_h, block_h, num_warps
    try:
        yield
    finally:
        BLOCK_T, BLOCK_H, BLOCK_H_FP32, NUM_WARPS = saved


def _block_h(dtype: torch.dtype) -> int:
    return BLOCK_H_FP32 if dtype == torch.float32 else BLOCK_H


def _block_r(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot needs every dimension >= 16


def _check(x: torch.Tensor, residual: Optional[torch.Tensor], w_down: torch.Tensor, b_down: torch.Tensor,
           w_up: torch.Tensor, b_up: torch.Tensor, activation: str) -> tuple[int, int]:
    if triton is None:
        raise RuntimeError("the fused adapter kernel needs Triton (pip install triton)")
    if activation not in _ACT_ID:
        raise ValueError(f"unsupported activation {activation!r} (supported: {', '.join(ACTIVATIONS)})")
    H = x.shape[-1]
    r = w_down.shape[0]
    if w_down.shape != (r, H) or w_up.shape != (H, r) or b_down.shape != (r,) or b_up.shape != (H,):
        raise ValueError(f"adapter shapes do not fit: x (..., {H}), W_down {tuple(w_down.shape)}, "
                         f"b_down {tuple(b_down.shape)}, W_up {tuple(w_up.shape)}, b_up {tuple(b_up.shape)}")
    if r > 128:
        raise ValueError(f"bottleneck width {r} > 128: the fused kernel keeps a row block's bottleneck in registers")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} differs from x {tuple(x.shape)}")
    tensors = [x, w_down, b_down, w_up, b_up] + ([residual] if residual is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError("x, residual and the adapter weights must be on one device")
    if len({t.dtype for t in (x, w_down, b_down, w_up, b_up)}) != 1:
        raise ValueError("x and the adapter weights must share one dtype")
    return H, r


def _dot_mode(dtype: torch.dtype) -> int:
    if interpreting():
        return 2
    return 1 if dtype == torch.float32 else 0  # no TF32 for float32 inputs: results within float32 tolerance


def adapter_forward(x: torch.Tensor, residual: Optional[torch.Tensor], w_down: torch.Tensor, b_down: torch.Tensor,
                    w_up: torch.Tensor, b_up: torch.Tensor, scale: float, activation: str,
                    keep_z: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Launch the forward kernel. Returns y (the residual's dtype) and, if ``keep_z``, z (T x r, float32)."""
    H, r = _check(x, residual, w_down, b_down, w_up, b_up, activation)
    x2 = x.reshape(-1, H).contiguous()
    res2 = residual.reshape(-1, H).contiguous() if residual is not None else None
    T = x2.shape[0]
    y = torch.empty((T, H), dtype=(residual if residual is not None else x).dtype, device=x.device)
    z = torch.empty((T, r), dtype=torch.float32, device=x.device) if keep_z else y  # y: an unused placeholder
    if T:
        _forward_kernel[(triton.cdiv(T, BLOCK_T),)](
            x2, res2 if res2 is not None else x2, w_down.contiguous(), b_down.contiguous(), w_up.contiguous(),
            b_up.contiguous(), y, z, T, H, r, float(scale),
            ACT=_ACT_ID[activation], HAS_RES=res2 is not None, STORE_Z=keep_z, DOT=_dot_mode(x.dtype),
            BLOCK_T=BLOCK_T, BLOCK_H=_block_h(x.dtype), BLOCK_R=_block_r(r), num_warps=NUM_WARPS)
    return y.reshape(x.shape[:-1] + (H,)), (z if keep_z else None)


def _slices(T: int, H: int, block_h: int, device: torch.device) -> int:
    """T slices for the weight-gradient reduction: enough programs to fill the GPU, few partials."""
    col_blocks = triton.cdiv(H, block_h)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(triton.cdiv(T, BLOCK_T), math.ceil(4 * sms / col_blocks)))


def adapter_backward(dy: torch.Tensor, x: torch.Tensor, z: torch.Tensor, w_down: torch.Tensor, w_up: torch.Tensor,
                     scale: float, activation: str, residual_is_x: bool, need_weights: bool = True):
    """Gradients of ``adapter_forward``: dx (with dy added when the residual is x), dW_down, db_down,
    dW_up, db_up (None when ``need_weights`` is false). The residual's own gradient is dy."""
    H, r = x.shape[-1], w_down.shape[0]
    x2 = x.reshape(-1, H).contiguous()
    dy2 = dy.reshape(-1, H).contiguous()
    T = x2.shape[0]
    dx = torch.empty_like(x2)
    dz = torch.empty((T, r), dtype=torch.float32, device=x.device)
    dot, block_r, block_h = _dot_mode(x.dtype), _block_r(r), _block_h(x.dtype)
    wd, wu = w_down.contiguous(), w_up.contiguous()
    if T:
        _backward_dx_kernel[(triton.cdiv(T, BLOCK_T),)](
            dy2, z, wu, wd, dx, dz, T, H, r, float(scale),
            ACT=_ACT_ID[activation], ADD_DY=residual_is_x, DOT=dot,
            BLOCK_T=BLOCK_T, BLOCK_H=block_h, BLOCK_R=block_r, num_warps=NUM_WARPS)
    dx = dx.reshape(x.shape)
    if not need_weights:
        return dx, None, None, None, None
    slices = _slices(T, H, block_h, x.device)
    rows_per_slice = triton.cdiv(triton.cdiv(max(T, 1), slices), BLOCK_T) * BLOCK_T
    dwu = torch.empty((slices, H, r), dtype=torch.float32, device=x.device)
    dwd = torch.empty((slices, H, r), dtype=torch.float32, device=x.device)
    dbu = torch.empty((slices, H), dtype=torch.float32, device=x.device)
    _backward_dw_kernel[(triton.cdiv(H, block_h), slices)](
        x2, dy2, z, dz, dwu, dwd, dbu, T, H, r, rows_per_slice,
        ACT=_ACT_ID[activation], DOT=dot, BLOCK_T=BLOCK_T, BLOCK_H=block_h, BLOCK_R=block_r, num_warps=NUM_WARPS)
    d_w_up = (scale * dwu.sum(0)).to(w_up.dtype)
    d_b_up = (scale * dbu.sum(0)).to(w_up.dtype)
    d_w_down = dwd.sum(0).t().contiguous().to(w_down.dtype)
    d_b_down = dz.sum(0).to(w_down.dtype)
    return dx, d_w_down, d_b_down, d_w_up, d_b_up


class FusedAdapterFunction(torch.autograd.Function):
    """Autograd for the fused bottleneck; ``residual`` None means the residual is x."""

    @staticmethod
    def forward(ctx, x, residual, w_down, b_down, w_up, b_up, scale: float, activation: str):
        keep_z = any(ctx.needs_input_grad[i] for i in (0, 2, 3, 4, 5))
        y, z = adapter_forward(x, residual, w_down, b_down, w_up, b_up, scale, activation, keep_z)
        if keep_z:
            ctx.save_for_backward(x, z, w_down, w_up)
        ctx.scale, ctx.activation, ctx.residual_is_x = scale, activation, residual is None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, z, w_down, w_up = ctx.saved_tensors
        need_weights = any(ctx.needs_input_grad[i] for i in (2, 3, 4, 5))
        dx, dwd, dbd, dwu, dbu = adapter_backward(dy, x, z, w_down, w_up, ctx.scale, ctx.activation,
                                                  ctx.residual_is_x, need_weights)
        d_res = dy if ctx.needs_input_grad[1] else None
        return dx, d_res, dwd, dbd, dwu, dbu, None, None


def fused_adapter_bottleneck(x: torch.Tensor, residual: Optional[torch.Tensor], w_down: torch.Tensor,
                             b_down: torch.Tensor, w_up: torch.Tensor, b_up: torch.Tensor, scale: float = 1.0,
                             activation: str = "relu") -> torch.Tensor:
    """The fused kernel where Triton can run (CUDA, or the interpreter), else the PyTorch reference."""
    if kernels_available(x.device):
        return FusedAdapterFunction.apply(x, residual, w_down, b_down, w_up, b_up, float(scale), activation)
    return adapter_bottleneck_reference(x, residual, w_down, b_down, w_up, b_up, scale, activation)
