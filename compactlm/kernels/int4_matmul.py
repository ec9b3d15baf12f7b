"""int4 / NF4 / FP4 weight-only matmul ``y = x @ W``: jnp reference (the spec), Triton, dispatch.

Data contract (DESIGN.md §3, ``packing.py``): ``x[..., K]`` in bf16 / f16 / f32; ``qweight[K/8, N]``
int32 with the code of row k in bits ``4·(k % 8)``; ``scales[K/G, N]`` (absmax for NF4 / FP4) and,
for affine int4, ``zeros[K/G, N]``; ``y[..., N]`` in x's dtype. Every kernel dequantizes to f32
exactly like ``packing.dequantize``, casts W to the activation dtype for the tensor-core dot (the
reference does the same) and accumulates in f32.

Kernels (raw ``@triton.jit``, launched through ``_launch.triton_call`` on CUDA or
``_interpret.interpret_call`` in tests; output pointers last):

- ``_int4_matmul_kernel``: tiled GEMM after Triton tutorial 03 (grouped pid ordering, masks on
  every edge); the packed ``[BK/8, BN]`` words are loaded once and unpacked in registers
  (broadcast over the 8 nibbles, shift, reshape; the idea of gemlite's bitpacking).
- ``_int4_splitk_kernel``: decode path for M ≤ 16 — memory bound, so the grid is split along K
  (Marlin's split-K idea) to fill the SMs; each split writes an f32 partial ``[SPLIT_K, M, N]``
  and a second stage sums them (deterministic, no atomics, no zero-initialised output).
- ``_int4_matmul_bwd_kernel``: ``dx = dy @ W^T``, contracting over N with the same packed W.
- NF4 / FP4 codes index a 16-entry code book in-kernel (QLoRA; E2M1).

``int4_matmul`` is differentiable w.r.t. x (``jax.custom_vjp``, weight frozen as in QLoRA).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

from compactlm.kernels import _launch, int4_configs
from compactlm.kernels.packing import (
    CODEBOOKS,
    FORMATS,
    check_format,
    check_packed,
    dequantize,
)

Impl = Literal["auto", "triton", "reference"]
IMPLS = ("auto", "triton", "reference")
ACTIVATION_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
DECODE_MAX_M = 16

# In-kernel format codes (constexpr FMT).
FMT_INT4_SYM, FMT_INT4_AFFINE, FMT_CODEBOOK = 0, 1, 2


# ============================================================================ reference (the spec)


def reference_int4_matmul(
    x, qweight, scales, zeros=None, *, format: str = "int4", group_size: int | None = None
) -> jax.Array:
    """``x @ dequantize(W)``: W dequantized in f32, cast to x's dtype, dot with f32 accumulation."""
    w = dequantize(qweight, scales, zeros, format=format, group_size=group_size)
    y = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def reference_int4_matmul_bwd(
    dy, qweight, scales, zeros=None, *, format: str = "int4", group_size: int | None = None
) -> jax.Array:
    """``dx = dy @ dequantize(W)^T`` (contracts over N), f32 accumulation, in dy's dtype."""
    w = dequantize(qweight, scales, zeros, format=format, group_size=group_size)
    dx = jnp.dot(dy, w.astype(dy.dtype).T, preferred_element_type=jnp.float32)
    return dx.astype(dy.dtype)


# ============================================================================ Triton kernels


@triton.jit
def _dequant_tile(
    words, scale, zero, codebook_ptr,
    FMT: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
):  # fmt: skip
    """Packed words ``[BK/8, BN]`` → f32 weights ``[BK, BN]``, exactly as packing.dequantize.

    Each word is loaded once and broadcast over its 8 nibbles ([BK/8, 8, BN]); the row-major
    reshape puts nibble j of word i at row 8·i + j, i.e. row k — the packing contract.
    """
    shifts = (tl.arange(0, 8) * 4)[None, :, None]
    w3 = words[:, None, :]
    if FMT == 0:  # symmetric: move the nibble to the top, the arithmetic shift sign-extends
        q = (w3 << (28 - shifts)) >> 28
    else:
        q = (w3 >> shifts) & 0xF
    q = tl.reshape(q, (BLOCK_SIZE_K, BLOCK_SIZE_N))
    if FMT == 0:
        w = q.to(tl.float32) * scale
    elif FMT == 1:  # affine
        w = (q.to(tl.float32) - zero) * scale
    else:  # NF4 / FP4: 16-entry code book (64 bytes, stays in L1)
        w = tl.load(codebook_ptr + q) * scale
    return w


@triton.jit
def _int4_matmul_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_ym, stride_yn,
    y_ptr,
    GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    # -------------------------------------------------------------- pid mapping (tutorial 03)
    # Grouped ordering: GROUP_SIZE_M row tiles share each column tile of W while it is in L2.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # -------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_kw = tl.arange(0, BLOCK_SIZE_K // 8)  # packed rows: one int32 word per 8 k
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    q_ptrs = qweight_ptr + offs_kw[:, None] * stride_qk + offs_n[None, :] * stride_qn

    # -------------------------------------------------------------- K loop
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k0 = kb * BLOCK_SIZE_K
        mask_k = offs_k < K - k0
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        words = tl.load(q_ptrs, mask=(offs_kw[:, None] * 8 < K - k0) & mask_n[None, :], other=0)
        if GROUP_SIZE % BLOCK_SIZE_K == 0:  # the whole K tile lies in one group: one scale row
            s_off = (k0 // GROUP_SIZE) * stride_sg + offs_n[None, :] * stride_sn
            s_mask = mask_n[None, :]
        else:  # groups smaller than the tile (or per-channel with ragged K): gather per row
            s_off = ((k0 + offs_k[:, None]) // GROUP_SIZE) * stride_sg + offs_n[None, :] * stride_sn
            s_mask = mask_k[:, None] & mask_n[None, :]
        scale = tl.load(scales_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        zero = 0.0
        if FMT == 1:
            zero = tl.load(zeros_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        w = _dequant_tile(words, scale, zero, codebook_ptr, FMT, BLOCK_SIZE_K, BLOCK_SIZE_N)
        if DOT_FP32:  # interpreter: its bf16 arithmetic is wrong, keep both operands f32
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
        x_ptrs += BLOCK_SIZE_K * stride_xk
        q_ptrs += (BLOCK_SIZE_K // 8) * stride_qk

    # -------------------------------------------------------------- epilogue
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _int4_splitk_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn,
    stride_ps, stride_pm, stride_pn,
    partial_ptr,
    GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    SPLIT_K: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    # -------------------------------------------------------------- pid mapping
    # axis 0: column tile of W; axis 1: which contiguous K range (split) this program reduces.
    pid_n = tl.program_id(axis=0)
    pid_k = tl.program_id(axis=1)
    k_tiles_per_split = tl.cdiv(tl.cdiv(K, BLOCK_SIZE_K), SPLIT_K)
    k_begin = pid_k * k_tiles_per_split * BLOCK_SIZE_K

    # -------------------------------------------------------------- pointer setup
    offs_m = tl.arange(0, BLOCK_SIZE_M)  # all of M (≤ 16) in one tile
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = k_begin + tl.arange(0, BLOCK_SIZE_K)
    offs_kw = k_begin // 8 + tl.arange(0, BLOCK_SIZE_K // 8)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    q_ptrs = qweight_ptr + offs_kw[:, None] * stride_qk + offs_n[None, :] * stride_qn

    # -------------------------------------------------------------- K loop (this split only)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for kb in range(0, k_tiles_per_split):
        k0 = k_begin + kb * BLOCK_SIZE_K
        mask_k = offs_k < K - kb * BLOCK_SIZE_K
        mask_kw = offs_kw * 8 < K - kb * BLOCK_SIZE_K
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        words = tl.load(q_ptrs, mask=mask_kw[:, None] & mask_n[None, :], other=0)
        if GROUP_SIZE % BLOCK_SIZE_K == 0:
            s_off = (k0 // GROUP_SIZE) * stride_sg + offs_n[None, :] * stride_sn
            s_mask = mask_n[None, :] & (k0 < K)
        else:
            s_off = ((offs_k[:, None] + kb * BLOCK_SIZE_K) // GROUP_SIZE) * stride_sg
            s_off += offs_n[None, :] * stride_sn
            s_mask = mask_k[:, None] & mask_n[None, :]
        scale = tl.load(scales_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        zero = 0.0
        if FMT == 1:
            zero = tl.load(zeros_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        w = _dequant_tile(words, scale, zero, codebook_ptr, FMT, BLOCK_SIZE_K, BLOCK_SIZE_N)
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
        x_ptrs += BLOCK_SIZE_K * stride_xk
        q_ptrs += (BLOCK_SIZE_K // 8) * stride_qk

    # -------------------------------------------------------------- epilogue: f32 partial
    p_ptrs = partial_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm
    p_ptrs += offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _int4_matmul_bwd_kernel(
    dy_ptr, qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr,
    M, N, K,
    stride_dym, stride_dyn, stride_qk, stride_qn, stride_sg, stride_sn, stride_dxm, stride_dxk,
    dx_ptr,
    GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    # -------------------------------------------------------------- pid mapping
    # Output dx[M, K]: tiles over (M, K), grouped along M as in the forward; N is contracted.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_k = tl.cdiv(K, BLOCK_SIZE_K)
    num_pid_in_group = GROUP_SIZE_M * num_pid_k
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_k = (pid % num_pid_in_group) // group_size_m

    # -------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_n = tl.arange(0, BLOCK_SIZE_N)
    mask_m = offs_m < M
    mask_k = offs_k < K
    offs_kw = pid_k * (BLOCK_SIZE_K // 8) + tl.arange(0, BLOCK_SIZE_K // 8)
    mask_kw = offs_kw * 8 < K
    dy_ptrs = dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    q_ptrs = qweight_ptr + offs_kw[:, None] * stride_qk + offs_n[None, :] * stride_qn
    if GROUP_SIZE % BLOCK_SIZE_K == 0:  # this K tile lies in one group: one scale row
        s_rows = (pid_k * BLOCK_SIZE_K // GROUP_SIZE) * stride_sg + tl.zeros((1, 1), tl.int32)
    else:
        s_rows = (offs_k[:, None] // GROUP_SIZE) * stride_sg

    # -------------------------------------------------------------- N loop (contracted)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=tl.float32)
    for nb in range(0, tl.cdiv(N, BLOCK_SIZE_N)):
        n0 = nb * BLOCK_SIZE_N
        mask_n = offs_n < N - n0
        dy = tl.load(dy_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        words = tl.load(q_ptrs, mask=mask_kw[:, None] & mask_n[None, :], other=0)
        s_off = s_rows + (n0 + offs_n[None, :]) * stride_sn
        if GROUP_SIZE % BLOCK_SIZE_K == 0:
            s_mask = mask_n[None, :]
        else:
            s_mask = mask_k[:, None] & mask_n[None, :]
        scale = tl.load(scales_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        zero = 0.0
        if FMT == 1:
            zero = tl.load(zeros_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        w = _dequant_tile(words, scale, zero, codebook_ptr, FMT, BLOCK_SIZE_K, BLOCK_SIZE_N)
        if DOT_FP32:
            acc = tl.dot(dy.to(tl.float32), tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(dy, tl.trans(w.to(dy.dtype)), acc)
        dy_ptrs += BLOCK_SIZE_N * stride_dyn
        q_ptrs += BLOCK_SIZE_N * stride_qn

    # -------------------------------------------------------------- epilogue
    dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])


# ============================================================================ launch builders
# Written once against triton_call's convention; `launch` is _launch.triton_call on CUDA or
# _interpret.interpret_call in the tests, so the interpreter exercises this exact argument list.


def _fmt_code(format: str, zeros) -> int:
    if format == "int4":
        return FMT_INT4_SYM if zeros is None else FMT_INT4_AFFINE
    return FMT_CODEBOOK


def _codebook(format: str):
    return np.asarray(CODEBOOKS.get(format, np.zeros(16, np.float32)), np.float32)


def launch_int4_matmul(
    launch, x, qweight, scales, zeros, *, format: str, config: dict, dot_fp32: bool = False
):
    """Forward ``y[M, N] = x[M, K] @ W``: the split-K decode kernel when ``config`` has
    ``SPLIT_K`` (M ≤ BLOCK_SIZE_M), else the tiled GEMM."""
    m, k = x.shape
    n = qweight.shape[1]
    g = k // scales.shape[0]
    cfg = dict(config)
    common = (x, qweight, scales, scales if zeros is None else zeros, _codebook(format), m, n, k)
    meta = dict(GROUP_SIZE=g, FMT=_fmt_code(format, zeros), DOT_FP32=dot_fp32)
    if "SPLIT_K" in cfg:  # the decode configuration (int4_configs bucket "decode")
        if m > cfg["BLOCK_SIZE_M"]:
            raise ValueError(
                f"decode kernel takes M <= BLOCK_SIZE_M={cfg['BLOCK_SIZE_M']}, got {m}"
            )
        split = cfg.pop("SPLIT_K")
        partial = launch(
            _int4_splitk_kernel,
            (triton.cdiv(n, cfg["BLOCK_SIZE_N"]), split),
            *common,
            k, 1, n, 1, n, 1,
            m * n, n, 1,
            out_shape=((split, m, n), np.float32),
            SPLIT_K=split,
            **meta,
            **cfg,
        )  # fmt: skip
        return partial.sum(axis=0).astype(x.dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_SIZE_M"]) * triton.cdiv(n, cfg["BLOCK_SIZE_N"]),)
    return launch(
        _int4_matmul_kernel,
        grid,
        *common,
        k, 1, n, 1, n, 1, n, 1,
        out_shape=((m, n), x.dtype),
        **meta,
        **cfg,
    )  # fmt: skip


def launch_int4_matmul_bwd(
    launch, dy, qweight, scales, zeros, *, format: str, config: dict, dot_fp32: bool = False
):
    """Backward ``dx[M, K] = dy[M, N] @ W^T`` with the packed W."""
    m, n = dy.shape
    k = qweight.shape[0] * 8
    g = k // scales.shape[0]
    cfg = dict(config)
    grid = (triton.cdiv(m, cfg["BLOCK_SIZE_M"]) * triton.cdiv(k, cfg["BLOCK_SIZE_K"]),)
    return launch(
        _int4_matmul_bwd_kernel,
        grid,
        dy, qweight, scales, scales if zeros is None else zeros, _codebook(format),
        m, n, k,
        n, 1, n, 1, n, 1, k, 1,
        out_shape=((m, k), dy.dtype),
        GROUP_SIZE=g,
        FMT=_fmt_code(format, zeros),
        DOT_FP32=dot_fp32,
        **cfg,
    )  # fmt: skip


def _config(m: int, n: int, k: int, format: str, *, backward: bool = False) -> dict:
    kind = _launch.device_kind()
    cfg = int4_configs.get_config(kind, m, n, k, format, backward=backward)
    if not backward and m <= DECODE_MAX_M and "SPLIT_K" not in cfg:
        cfg["SPLIT_K"] = int4_configs.split_k_for(
            kind, n, k, cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
        )
    return cfg


# ============================================================================ dispatch


def unsupported_reason(shape: tuple[int, int, int], dtype, format: str = "int4") -> str | None:
    """Why the Triton path cannot take ``(M, N, K)`` at this dtype/format, or None if it can."""
    m, n, k = shape
    if format not in FORMATS:
        return f"format {format!r} is not one of {FORMATS}"
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in ACTIVATION_DTYPES]:
        return f"activation dtype {jnp.dtype(dtype).name} is not bf16, f16 or f32"
    if k % 8:
        return f"K={k} is not a multiple of 8"
    if max(m * k, m * n, (k // 8) * n) >= 2**31:
        return f"(M, N, K)={shape} overflows the kernels' int32 offsets"
    return None


def supports(shape: tuple[int, int, int], dtype, format: str = "int4") -> bool:
    """Whether the Triton kernels handle ``x[M, K] @ W[K, N]`` (device aside)."""
    return unsupported_reason(shape, dtype, format) is None


def _device_reason(dtype) -> str | None:
    if not _launch.on_cuda():
        return f"needs a CUDA device, JAX's default backend is {jax.default_backend()!r}"
    cc = _launch.compute_capability()
    if cc is not None and cc < (8, 0) and jnp.dtype(dtype) == jnp.bfloat16:
        return f"bf16 tensor-core dots need compute capability >= 8.0, found {cc}"
    return None


def _forward(x2, qweight, scales, zeros, format, impl):
    if impl == "reference":
        return reference_int4_matmul(x2, qweight, scales, zeros, format=format)
    m, k = x2.shape
    cfg = _config(m, qweight.shape[1], k, format)
    return launch_int4_matmul(_launch.triton_call, x2, qweight, scales, zeros, format=format,
                              config=cfg)  # fmt: skip


def _backward(dy2, qweight, scales, zeros, format, impl):
    if impl == "reference":
        return reference_int4_matmul_bwd(dy2, qweight, scales, zeros, format=format)
    m, n = dy2.shape
    cfg = _config(m, n, qweight.shape[0] * 8, format, backward=True)
    return launch_int4_matmul_bwd(_launch.triton_call, dy2, qweight, scales, zeros,
                                  format=format, config=cfg)  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _int4_matmul_vjp(x2, qweight, scales, zeros, format, impl):
    return _forward(x2, qweight, scales, zeros, format, impl)


def _vjp_fwd(x2, qweight, scales, zeros, format, impl):
    return _forward(x2, qweight, scales, zeros, format, impl), (qweight, scales, zeros)


def _vjp_bwd(format, impl, residuals, dy):
    qweight, scales, zeros = residuals
    dx = _backward(dy, qweight, scales, zeros, format, impl)
    # The weight is frozen (QLoRA): no gradient flows to the packed codes, scales or zeros.
    d_q = np.zeros(qweight.shape, dtype=jax.dtypes.float0)
    d_z = None if zeros is None else jnp.zeros_like(zeros)
    return dx, d_q, jnp.zeros_like(scales), d_z


_int4_matmul_vjp.defvjp(_vjp_fwd, _vjp_bwd)


def int4_matmul(
    x,
    qweight,
    scales,
    zeros=None,
    *,
    format: str = "int4",
    group_size: int | None = None,
    impl: Impl = "auto",
) -> jax.Array:
    """``x[..., K] @ W[K, N]`` with W stored 4-bit; differentiable w.r.t. x (W frozen).

    ``impl="auto"``: Triton on a CUDA device when ``supports`` holds, else the reference.
    ``impl="triton"`` raises ValueError naming the constraint when it cannot run.
    """
    check_format(format)
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if format != "int4" and zeros is not None:
        raise ValueError(f"format {format!r} has no zero point; pass zeros=None")
    check_packed(qweight, scales, zeros, group_size=group_size)
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the packed weight has K={k}")
    x2 = x.reshape(-1, k)
    shape = (x2.shape[0], n, k)
    if impl == "auto":
        ok = _launch.on_cuda() and supports(shape, x.dtype, format) and not _device_reason(x.dtype)
        impl = "triton" if ok else "reference"
    elif impl == "triton":
        reason = unsupported_reason(shape, x.dtype, format) or _device_reason(x.dtype)
        if reason:
            raise ValueError(f"int4_matmul(impl='triton') cannot run: {reason}")
    y = _int4_matmul_vjp(x2, qweight, scales, zeros, format, impl)
    return y.reshape(*x.shape[:-1], n)


__all__ = [
    "int4_matmul",
    "reference_int4_matmul",
    "reference_int4_matmul_bwd",
    "supports",
    "unsupported_reason",
    "launch_int4_matmul",
    "launch_int4_matmul_bwd",
]
