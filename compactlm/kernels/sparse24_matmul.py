"""2:4 structured-sparse matmul y = x @ W, W stored as 2:4 values + metadata (bf16 or int4 values).

Data contract (GEMM letters, DESIGN.md §3; byte layout in packing.py's "2:4 structured sparsity"):
  x[..., K]        bf16 / f16 / f32; leading dims are flattened into M.
  values[K/2, N]   bf16 / f16 / f32, the two kept entries of every aligned group of 4 rows, or, for
                   int4+2:4, qvalues[K/16, N] int32 (int4 nibbles along the compressed axis) with
                   scales[K/2/G, N] and optional zeros[K/2/G, N] (G counts compressed rows).
  meta[K/32, N]    int32, nibble i0 | i1 << 2 (i0 < i1) of group g in row g // 8, bits 4·(g % 8).
  y[..., N]        x's dtype unless out_dtype says otherwise.
Numerics (what the references specify and every kernel reproduces): W is materialized in x's dtype
(int4 values are dequantized in fp32 first, w = (q − z)·s), then contracted with fp32 accumulation.

Where the design comes from: the 2:4 pattern and its 2-bit position metadata are those of NVIDIA's
sparse tensor cores and cuSPARSELt ("Accelerating Sparse Deep Neural Networks", Mishra et al. 2021);
the tiled GEMM (grouped pid ordering, masked K loop) is Triton's tutorial 03-matrix-multiplication.

Kernel choice: the kernels load the K/2 values and the metadata and EXPAND them into a dense
[BLOCK_SIZE_K, BLOCK_SIZE_N] tile in registers, then call tl.dot. The alternative, loading K/2
values and gathering the matching x elements, makes the x index depend on n, so the product is a
[M, K/2, N] gather-multiply with no MMA shape: it loses the tensor cores for every M > 1. Triton
3.6 exposes no sparse MMA (mma.sp), so the expansion does the multiply on the zeros too — 2× the
tensor-core work of the sparse hardware — but it moves only the compressed bytes (values + meta
are 56% of dense bf16, int4+2:4 19.5%), which is what decode (M ≤ 16, memory bound) pays for. A
compute-bound prefill/training GEMM runs at dense speed; beating it needs cuSPARSELt.

Kernels (raw @triton.jit, small explicit blocks in tests; launch configs are data, int4_configs):
  _sparse24_matmul_kernel      tiled GEMM, any M (masks on every edge).
  _sparse24_decode_kernel      M ≤ 16: grid (N tiles, SPLIT_K), fp32 partials summed by XLA
                               (deterministic, no atomics); tl.dot on a 16-row tile, or a GEMV
                               (broadcast-multiply-sum) when BLOCK_SIZE_M < 16.
  _sparse24_matmul_bwd_kernel  dx = dy @ Wᵀ over the same compressed W (the expanded tile is
                               transposed into tl.dot), for the custom_vjp backward.
Each takes INT4 as a constexpr and shares _load_w_tile, so one kernel serves both value formats
(the bf16 variant passes meta as a never-read stand-in for scales / zeros).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

from compactlm.kernels import _launch, int4_configs, packing
from compactlm.kernels.int4_matmul import _device_reason  # CUDA present, bf16 dots need sm_80+

Impl = Literal["auto", "triton", "reference"]
FORMATS = ("sparse24", "sparse24_int4")
FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
DECODE_MAX_M = 16  # rows served by the decode kernel; tl.dot's smallest tile is 16


# ==================================================================================================
# References (the specification)
# ==================================================================================================


def reference_sparse24_matmul(x, values, meta, *, out_dtype=None) -> jax.Array:
    """y = x @ decompress_24(values, meta), W in x's dtype, fp32 accumulation."""
    w = packing.decompress_24(values, meta).astype(x.dtype)
    y = jnp.dot(x, w, preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def reference_sparse24_int4_matmul(
    x, qvalues, meta, scales, zeros=None, *, group_size: int | None = None, out_dtype=None
) -> jax.Array:
    """y = x @ W, W = decompress_24(dequantize_int4(qvalues, scales, zeros)) (f32) in x's dtype."""
    w = packing.dequantize_sparse24_int4(qvalues, meta, scales, zeros, group_size=group_size)
    y = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def _reference_dense_w(values, meta, scales, zeros, dtype) -> jax.Array:
    if scales is None:
        return packing.decompress_24(values, meta).astype(dtype)
    return packing.dequantize_sparse24_int4(values, meta, scales, zeros).astype(dtype)


def _reference_backward(dy, values, meta, scales, zeros, x_dtype) -> jax.Array:
    """dx = dy @ Wᵀ with the forward's W (x's dtype) and fp32 accumulation."""
    w = _reference_dense_w(values, meta, scales, zeros, x_dtype)
    return jnp.dot(dy.astype(x_dtype), w.T, preferred_element_type=jnp.float32).astype(x_dtype)


# ==================================================================================================
# Triton kernels
# ==================================================================================================


@triton.jit
def _repeat_rows(t, R: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS/R, COLS] → [ROWS, COLS], each row repeated R times, in registers."""
    return tl.reshape(tl.broadcast_to(t[:, None, :], (ROWS // R, R, COLS)), (ROWS, COLS))


@triton.jit
def _load_w_tile(
    values_ptr, meta_ptr, scales_ptr, zeros_ptr, k_start, offs_n, K, N,
    stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr, BLOCK_SIZE_N: tl.constexpr,
):  # fmt: skip
    """Dense W[k_start : k_start + BLOCK_SIZE_K, offs_n] (values' dtype, or fp32 for int4).

    k_start is a multiple of BLOCK_SIZE_K, itself a multiple of 32. Every load is compact (the
    tile's K/2 values or K/16 int4 words, K/32 metadata words): loading at the dense shape with
    repeated addresses would let the software pipeliner stage 4-16× the bytes in shared memory
    (measured: 290-315 KB at the default tiles, over Hopper's 227 KB). Decoding happens once per
    2:4 group on [BLOCK_SIZE_K/4, BLOCK_SIZE_N]; only the final select is at the dense shape.
    """
    GROUPS: tl.constexpr = BLOCK_SIZE_K // 4
    offs_g = k_start // 4 + tl.arange(0, GROUPS)  # the tile's 2:4 groups
    n_ok = offs_n[None, :] < N
    # ---- metadata: one int32 per 8 groups, its nibble at 4·(g % 8)
    offs_w = k_start // 32 + tl.arange(0, BLOCK_SIZE_K // 32)
    word = tl.load(
        meta_ptr + offs_w[:, None] * stride_mk + offs_n[None, :] * stride_mn,
        mask=(offs_w[:, None] < K // 32) & n_ok,
        other=0,
    )
    word = _repeat_rows(word, 8, GROUPS, BLOCK_SIZE_N)
    nib = (word >> ((offs_g % 8) * 4)[:, None]) & 0xF  # & drops the arithmetic shift's sign bits
    g_ok = (offs_g[:, None] < K // 4) & n_ok
    # ---- the group's two kept values: compressed rows 2g and 2g + 1
    if INT4:
        offs_q = k_start // 16 + tl.arange(0, BLOCK_SIZE_K // 16)  # 8 codes = 4 groups per word
        q = tl.load(
            values_ptr + offs_q[:, None] * stride_vk + offs_n[None, :] * stride_vn,
            mask=(offs_q[:, None] < K // 16) & n_ok,
            other=0,
        )
        q = _repeat_rows(q, 4, GROUPS, BLOCK_SIZE_N)
        shift = (((2 * offs_g) % 8) * 4)[:, None]  # codes 2g, 2g + 1 at bits shift, shift + 4
        if HAS_ZEROS:  # affine: unsigned codes
            v0 = ((q >> shift) & 0xF).to(tl.float32)
            v1 = ((q >> (shift + 4)) & 0xF).to(tl.float32)
        else:  # symmetric: signed nibble, sign-extended by moving it to the top of the word
            v0 = ((q << (28 - shift)) >> 28).to(tl.float32)
            v1 = ((q << (24 - shift)) >> 28).to(tl.float32)
        # Scale rows cover QUANT_GROUP compressed rows = QUANT_GROUP / 2 groups.
        if 2 * QUANT_GROUP >= BLOCK_SIZE_K:  # one scale row for the whole (aligned) tile
            s_row = k_start // (2 * QUANT_GROUP)
            s_off = s_row * stride_sk + offs_n[None, :] * stride_sn
            s_ok = (k_start < K) & n_ok
            s = tl.load(scales_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                v0 -= tl.load(zeros_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
                v1 -= tl.load(zeros_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
        else:
            S_ROWS: tl.constexpr = BLOCK_SIZE_K // (2 * QUANT_GROUP)
            offs_s = k_start // (2 * QUANT_GROUP) + tl.arange(0, S_ROWS)
            s_off = offs_s[:, None] * stride_sk + offs_n[None, :] * stride_sn
            s_ok = (offs_s[:, None] * (2 * QUANT_GROUP) < K) & n_ok
            s = tl.load(scales_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
            s = _repeat_rows(s, QUANT_GROUP // 2, GROUPS, BLOCK_SIZE_N)
            if HAS_ZEROS:
                z = tl.load(zeros_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
                z = _repeat_rows(z, QUANT_GROUP // 2, GROUPS, BLOCK_SIZE_N)
                v0 -= z
                v1 -= z
        v0 = v0 * s  # (q − z) · s in this order, exactly as packing.dequantize_int4
        v1 = v1 * s
    else:
        v_ptrs = values_ptr + (2 * offs_g)[:, None] * stride_vk + offs_n[None, :] * stride_vn
        v0 = tl.load(v_ptrs, mask=g_ok, other=0.0)
        v1 = tl.load(v_ptrs + stride_vk, mask=g_ok, other=0.0)
    # ---- expand to the dense tile: row 4g + p holds v0 if p == i0, v1 if p == i1, else 0
    v0 = _repeat_rows(v0, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
    v1 = _repeat_rows(v1, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
    nib = _repeat_rows(nib, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
    pos = (tl.arange(0, BLOCK_SIZE_K) % 4)[:, None]
    return tl.where(pos == (nib & 3), v0, tl.where(pos == (nib >> 2), v1, tl.zeros_like(v0)))


@triton.jit
def _sparse24_matmul_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
    stride_ym, stride_yn,
    y_ptr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """y[M, N] = x[M, K] @ W[K, N], W expanded tile by tile from the 2:4 storage."""
    # ---------------------------------------------------------------- pid mapping (tutorial 03)
    # Grouped ordering: GROUP_SIZE_M row tiles sweep the same W column tiles while they are in L2.
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # ---------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk

    # ---------------------------------------------------------------- K loop
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_start = k0 * BLOCK_SIZE_K
        k = k_start + offs_k
        a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = _load_w_tile(
            values_ptr, meta_ptr, scales_ptr, zeros_ptr, k_start, offs_n, K, N,
            stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
            INT4, HAS_ZEROS, QUANT_GROUP, BLOCK_SIZE_K, BLOCK_SIZE_N,
        ).to(a.dtype)  # fmt: skip
        if DOT_FP32:  # the interpreter's bf16 is wrong; products of f16/bf16 are exact in f32
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_SIZE_K * stride_xk

    # ---------------------------------------------------------------- epilogue
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def _sparse24_decode_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr,
    M, N, K, K_PER_SPLIT,
    stride_xm, stride_xk, stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
    stride_ps, stride_pm, stride_pn,
    partial_ptr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """partial[s, M, N] = x[:, Ks] @ W[Ks, :] for the K slice Ks of split s; M ≤ BLOCK_SIZE_M."""
    # ---------------------------------------------------------------- pid mapping
    # One row tile covers all of M; axis 0 walks N tiles, axis 1 the K splits, so a few wide
    # columns still put ~2 programs on every SM (memory bound: occupancy is bandwidth).
    pid_n = tl.program_id(axis=0)
    pid_k = tl.program_id(axis=1)

    # ---------------------------------------------------------------- pointer setup
    offs_m = tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    split_start = pid_k * K_PER_SPLIT  # K_PER_SPLIT % BLOCK_SIZE_K == 0: tiles stay aligned
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (split_start + offs_k)[None, :] * stride_xk

    # ---------------------------------------------------------------- K loop (this split only)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K_PER_SPLIT, BLOCK_SIZE_K)):
        k_start = split_start + k0 * BLOCK_SIZE_K
        k = k_start + offs_k
        a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = _load_w_tile(
            values_ptr, meta_ptr, scales_ptr, zeros_ptr, k_start, offs_n, K, N,
            stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
            INT4, HAS_ZEROS, QUANT_GROUP, BLOCK_SIZE_K, BLOCK_SIZE_N,
        ).to(a.dtype)  # fmt: skip
        if BLOCK_SIZE_M >= 16:
            if DOT_FP32:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, w, acc, input_precision=INPUT_PRECISION)
        else:  # GEMV: too few rows for an MMA tile; fp32 products, reduce over K in registers
            prod = a.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :]
            acc += tl.sum(prod, axis=1)
        x_ptrs += BLOCK_SIZE_K * stride_xk

    # ---------------------------------------------------------------- epilogue
    p_ptrs = partial_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm
    p_ptrs += offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def _sparse24_matmul_bwd_kernel(
    dy_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr,
    M, N, K,
    stride_dym, stride_dyn, stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
    stride_dxm, stride_dxk,
    dx_ptr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, QUANT_GROUP: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dx[M, K] = dy[M, N] @ W[K, N]ᵀ; here N is the contracted dimension."""
    # ---------------------------------------------------------------- pid mapping (tutorial 03)
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_k = tl.cdiv(K, BLOCK_SIZE_K)
    num_pid_in_group = GROUP_SIZE_M * num_pid_k
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_k = (pid % num_pid_in_group) // group_size_m

    # ---------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_n = tl.arange(0, BLOCK_SIZE_N)
    dy_ptrs = dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn

    # ---------------------------------------------------------------- N loop (contracted)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=tl.float32)
    for n0 in range(0, tl.cdiv(N, BLOCK_SIZE_N)):
        n = n0 * BLOCK_SIZE_N + offs_n
        g = tl.load(dy_ptrs, mask=(offs_m[:, None] < M) & (n[None, :] < N), other=0.0)
        w = _load_w_tile(
            values_ptr, meta_ptr, scales_ptr, zeros_ptr, pid_k * BLOCK_SIZE_K, n, K, N,
            stride_vk, stride_vn, stride_mk, stride_mn, stride_sk, stride_sn,
            INT4, HAS_ZEROS, QUANT_GROUP, BLOCK_SIZE_K, BLOCK_SIZE_N,
        ).to(g.dtype)  # fmt: skip
        if DOT_FP32:
            g = g.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(g, tl.trans(w), acc, input_precision=INPUT_PRECISION)
        dy_ptrs += BLOCK_SIZE_N * stride_dyn

    # ---------------------------------------------------------------- epilogue
    dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    dx_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=dx_mask)


# ==================================================================================================
# Launch: one code path for jax_triton on CUDA and the interpreter in tests
# ==================================================================================================
# `call` is _launch.triton_call or _interpret.interpret_call; both take (kernel, grid, *args,
# out_shape=, **constexprs) and bind outputs to the trailing pointer parameters. Operands are
# contiguous row-major (jax arrays; interpret_call copies to C order), so strides are (cols, 1).


def _format(scales) -> str:
    return "sparse24" if scales is None else "sparse24_int4"


def _weight_operands(values, meta, scales, zeros) -> tuple[tuple, tuple, dict[str, Any]]:
    """(pointer operands, their strides, constexprs) for either value format."""
    K, N = meta.shape[0] * 32, meta.shape[1]
    if scales is None:
        # Never read (INT4=False prunes the branch); meta stands in for the two pointers.
        ptrs, s_strides, quant_group = (values, meta, meta, meta), (0, 0), 1
    else:
        z = scales if zeros is None else zeros
        ptrs, s_strides = (values, meta, scales, z), (N, 1)
        quant_group = (K // 2) // scales.shape[0]
        if scales.shape[0] == 1:  # per-channel: any size that covers K/2 works; the kernel's
            quant_group = triton.next_power_of_2(quant_group)  # row repeat needs a power of 2
    constexprs = dict(INT4=scales is not None, HAS_ZEROS=zeros is not None, QUANT_GROUP=quant_group)
    return ptrs, (N, 1, N, 1, *s_strides), constexprs


def _precision(dtype, dot_fp32: bool) -> str:
    # f32 operands would silently run as TF32 (10-bit mantissa) on Ampere+; the reference is IEEE.
    return "ieee" if dot_fp32 or jnp.dtype(dtype) == jnp.float32 else "tf32"


def _launch_matmul(call, x2, values, meta, scales, zeros, *, out_dtype, config, dot_fp32=False):
    """Tiled GEMM: y[M, N] in out_dtype."""
    (M, K), N = x2.shape, meta.shape[1]
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k not in ("GEMV_MAX_M", "SPLIT_K")}
    grid = (triton.cdiv(M, cfg["BLOCK_SIZE_M"]) * triton.cdiv(N, cfg["BLOCK_SIZE_N"]),)
    return call(
        _sparse24_matmul_kernel, grid, x2, *ptrs, M, N, K, K, 1, *strides, N, 1,
        out_shape=jax.ShapeDtypeStruct((M, N), jnp.dtype(out_dtype)),
        DOT_FP32=dot_fp32, INPUT_PRECISION=_precision(x2.dtype, dot_fp32), **constexprs, **cfg,
    )  # fmt: skip


def _launch_decode(call, x2, values, meta, scales, zeros, *, out_dtype, config, dot_fp32=False):
    """M ≤ 16: split-K partials [SPLIT_K, M, N] in fp32, summed here (deterministic order)."""
    (M, K), N = x2.shape, meta.shape[1]
    if M > DECODE_MAX_M:
        raise ValueError(f"the decode kernel serves M <= {DECODE_MAX_M} rows, got M={M}")
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k != "GROUP_SIZE_M"}
    gemv_max_m, split_k = cfg.pop("GEMV_MAX_M", 1), cfg.pop("SPLIT_K", None)
    # GEMV for the few-row case; otherwise one 16-row MMA tile (tl.dot's minimum) covers M.
    cfg["BLOCK_SIZE_M"] = triton.next_power_of_2(M) if M <= gemv_max_m else DECODE_MAX_M
    block_n, block_k = cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    if split_k is None:
        split_k = int4_configs.split_k_for(_launch.device_kind(), N, K, block_n, block_k)
    k_per_split = triton.cdiv(triton.cdiv(K, block_k), split_k) * block_k
    split_k = triton.cdiv(K, k_per_split)  # no empty splits
    partial = call(
        _sparse24_decode_kernel, (triton.cdiv(N, block_n), split_k),
        x2, *ptrs, M, N, K, k_per_split, K, 1, *strides, M * N, N, 1,
        out_shape=jax.ShapeDtypeStruct((split_k, M, N), jnp.float32),
        DOT_FP32=dot_fp32, INPUT_PRECISION=_precision(x2.dtype, dot_fp32), **constexprs, **cfg,
    )  # fmt: skip
    return jnp.sum(jnp.asarray(partial), axis=0).astype(out_dtype)


def _launch_matmul_bwd(call, dy2, values, meta, scales, zeros, *, config, dot_fp32=False):
    """dx[M, K] = dy @ Wᵀ in dy's dtype (the caller casts dy to x's dtype)."""
    (M, N), K = dy2.shape, meta.shape[0] * 32
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k not in ("GEMV_MAX_M", "SPLIT_K")}
    grid = (triton.cdiv(M, cfg["BLOCK_SIZE_M"]) * triton.cdiv(K, cfg["BLOCK_SIZE_K"]),)
    return call(
        _sparse24_matmul_bwd_kernel, grid, dy2, *ptrs, M, N, K, N, 1, *strides, K, 1,
        out_shape=jax.ShapeDtypeStruct((M, K), dy2.dtype),
        DOT_FP32=dot_fp32, INPUT_PRECISION=_precision(dy2.dtype, dot_fp32), **constexprs, **cfg,
    )  # fmt: skip


def _config(M: int, N: int, K: int, fmt: str, *, backward: bool = False) -> dict[str, Any]:
    """Launch config from the per-GPU tables in int4_configs (data; nothing is tuned here)."""
    return int4_configs.get_config(_launch.device_kind(), M, N, K, fmt, backward=backward)


def _triton_forward(call, x2, values, meta, scales, zeros, *, out_dtype, config=None, **kw):
    M, N, K = x2.shape[0], meta.shape[1], meta.shape[0] * 32
    if M == 0:
        return jnp.zeros((0, N), out_dtype)
    cfg = config if config is not None else _config(M, N, K, _format(scales))
    launch = _launch_decode if M <= DECODE_MAX_M else _launch_matmul
    return launch(call, x2, values, meta, scales, zeros, out_dtype=out_dtype, config=cfg, **kw)


def _triton_backward(call, dy2, values, meta, scales, zeros, *, config=None, **kw):
    M, N, K = dy2.shape[0], meta.shape[1], meta.shape[0] * 32
    if M == 0:
        return jnp.zeros((0, K), dy2.dtype)
    cfg = config if config is not None else _config(M, N, K, _format(scales), backward=True)
    return _launch_matmul_bwd(call, dy2, values, meta, scales, zeros, config=cfg, **kw)


# ==================================================================================================
# supports() and dispatch
# ==================================================================================================


def _check_operands(x, values, meta, scales, zeros, group_size) -> tuple[int, int]:
    """Shape / dtype agreement (both impls); returns (K, N)."""
    if meta.ndim != 2 or meta.dtype != jnp.int32:
        raise ValueError(f"meta must be [K/32, N] int32, got {meta.shape} {meta.dtype}")
    K, N = meta.shape[0] * 32, meta.shape[1]
    if scales is None:
        if jnp.dtype(values.dtype) not in FLOAT_DTYPES:
            raise ValueError(f"values must be bf16, f16 or f32, got {values.dtype}")
        want = (K // 2, N)
    else:
        if values.dtype != jnp.int32:
            raise ValueError(f"qvalues must be int32 (8 int4 codes per word), got {values.dtype}")
        want = (K // 16, N)
        packing.check_packed(values, scales, zeros, group_size=group_size)
    if tuple(values.shape) != want:
        raise ValueError(f"values shape {tuple(values.shape)} does not fit meta {meta.shape}: "
                         f"K={K}, N={N} needs {want}")  # fmt: skip
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the 2:4 weight has K={K}")
    return K, N


def unsupported_reason(shape: tuple[int, int, int], dtype, format: str = "sparse24") -> str | None:
    """Why the Triton kernels cannot take x[M, K] @ W[K, N] (device aside), or None if they can."""
    M, N, K = shape
    if format not in FORMATS:
        return f"format {format!r} is not one of {FORMATS}"
    if jnp.dtype(dtype) not in FLOAT_DTYPES:
        return f"activation dtype {jnp.dtype(dtype).name} is not bf16, f16 or f32"
    if K % 32:
        return f"K={K} is not a multiple of 32 (one int32 of 2:4 metadata covers 32 rows)"
    # Offsets are int32 in the kernels (jax-triton passes sizes as i32).
    if max(M * K, M * N, K * N // 2) >= 2**31:
        return f"(M, N, K)={shape} overflows the kernels' int32 offsets"
    return None


def supports(shape: tuple[int, int, int], dtype, format: str = "sparse24") -> bool:
    """Whether the Triton kernels handle x[M, K] @ W[K, N] in this format (device aside)."""
    return unsupported_reason(shape, dtype, format) is None


def _triton_reason(shape, dtype, format) -> str | None:
    reason = unsupported_reason(shape, dtype, format) or _device_reason(dtype)
    if reason is None:
        try:
            _launch._jax_triton()
        except ImportError as e:
            reason = str(e)
    return reason


def _resolve_impl(impl: str, reason: str | None, op: str) -> str:
    if impl == "reference":
        return "reference"
    if impl == "triton":
        if reason is not None:
            raise ValueError(f"{op}(impl='triton') cannot run: {reason}")
        return "triton"
    if impl == "auto":
        return "triton" if reason is None else "reference"
    raise ValueError(f"impl must be one of 'auto', 'triton', 'reference'; got {impl!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype):
    if impl == "reference":
        w = _reference_dense_w(values, meta, scales, zeros, x_dtype)
        return jnp.dot(x2, w, preferred_element_type=jnp.float32).astype(out_dtype)
    call = _launch.triton_call
    return _triton_forward(call, x2, values, meta, scales, zeros, out_dtype=out_dtype)


def _sparse24_core_fwd(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype):
    y = _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype)
    return y, (values, meta, scales, zeros)


def _sparse24_core_bwd(impl, out_dtype, x_dtype, residuals, dy):
    values, meta, scales, zeros = residuals
    if impl == "reference":
        dx = _reference_backward(dy, values, meta, scales, zeros, x_dtype)
    else:
        dy2 = dy.astype(x_dtype)
        dx = _triton_backward(_launch.triton_call, dy2, values, meta, scales, zeros)

    def frozen(a):  # weights are frozen: zero cotangents (float0 for the integer arrays)
        if a is None:
            return None
        if jnp.issubdtype(a.dtype, jnp.integer):
            return np.zeros(a.shape, dtype=jax.dtypes.float0)
        return jnp.zeros_like(a)

    return (dx, *(frozen(a) for a in (values, meta, scales, zeros)))


_sparse24_core.defvjp(_sparse24_core_fwd, _sparse24_core_bwd)


def _dispatch(x, values, meta, scales, zeros, group_size, impl, out_dtype):
    K, N = _check_operands(x, values, meta, scales, zeros, group_size)
    x2 = x.reshape(-1, K)
    fmt = _format(scales)
    op = "sparse24_matmul" if scales is None else "sparse24_int4_matmul"
    impl = _resolve_impl(impl, _triton_reason((x2.shape[0], N, K), x.dtype, fmt), op)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    y2 = _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, jnp.dtype(x.dtype))
    return y2.reshape(*x.shape[:-1], y2.shape[-1])


def sparse24_matmul(x, values, meta, *, impl: Impl = "auto", out_dtype=None) -> jax.Array:
    """y = x @ W for a 2:4-compressed W (values[K/2, N] + meta[K/32, N]).

    impl="auto": the Triton kernels on a CUDA device when supports() holds, else the reference;
    "triton" raises if they cannot run, naming the constraint. Differentiable w.r.t. x (dx = dy @
    Wᵀ over the same compressed W); the weights are frozen: their cotangents are zero.
    """
    return _dispatch(x, values, meta, None, None, None, impl, out_dtype)


def sparse24_int4_matmul(
    x,
    qvalues,
    meta,
    scales,
    zeros=None,
    *,
    group_size: int | None = None,
    impl: Impl = "auto",
    out_dtype=None,
) -> jax.Array:
    """y = x @ W for the int4+2:4 format (see sparse24_matmul; group_size is checked if given)."""
    return _dispatch(x, qvalues, meta, scales, zeros, group_size, impl, out_dtype)
