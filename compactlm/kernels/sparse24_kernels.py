"""2:4 structured-sparse matmul kernels (bf16 or int4 values): raw GEMM, decode and backward.

Data contract (docs/architecture.md §4; byte layout in packing.py, the op and its reference in
``sparse24_matmul.py``): ``x[M, K]`` bf16 / f16 / f32; ``values[K/2, N]`` bf16 / f16 / f32, or
``qvalues[K/16, N]`` int32 (int4 nibbles along the compressed axis) with ``scales`` / ``zeros``
``[K/2/G, N]``; ``meta[K/32, N]`` int32, nibble ``i0 | i1 << 2`` of group g in row g // 8 at bits
``4·(g % 8)``; output pointers last (``y[M, N]``, ``partial[SPLIT_K, M, N]`` f32, ``dx[M, K]``).

Design: NVIDIA's 2:4 pattern and metadata (Mishra et al. 2021), expanded to a dense tile in
registers before ``tl.dot`` (why: ``sparse24_matmul``'s docstring); the tiled GEMM is Triton's
tutorial 03.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import triton
import triton.language as tl

from compactlm.kernels import _launch, int4_configs
from compactlm.kernels._tile_ops import (
    MAGIC_2_23,
    compiled,
    dot_acc,
    grouped_pid,
    lane_table_asm,
    nibble,
    repeat_rows,
)
from compactlm.kernels.gemv_kernels import _sparse24_gemv_kernel, gemv_grid

DECODE_MAX_M = 16  # rows served by the decode kernel; tl.dot's smallest tile is 16


# ==================================================================================================
# Triton kernels
# ==================================================================================================


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
    word = repeat_rows(word, 8, GROUPS, BLOCK_SIZE_N)
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
        q = repeat_rows(q, 4, GROUPS, BLOCK_SIZE_N)
        shift = (((2 * offs_g) % 8) * 4)[:, None]  # codes 2g, 2g + 1 at bits shift, shift + 4
        v0 = nibble(q, shift, not HAS_ZEROS).to(tl.float32)  # symmetric codes are signed
        v1 = nibble(q, shift + 4, not HAS_ZEROS).to(tl.float32)
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
            s = repeat_rows(s, QUANT_GROUP // 2, GROUPS, BLOCK_SIZE_N)
            if HAS_ZEROS:
                z = tl.load(zeros_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
                z = repeat_rows(z, QUANT_GROUP // 2, GROUPS, BLOCK_SIZE_N)
                v0 -= z
                v1 -= z
        v0 = v0 * s  # (q − z) · s in this order, exactly as packing.dequantize_int4
        v1 = v1 * s
    else:
        v_ptrs = values_ptr + (2 * offs_g)[:, None] * stride_vk + offs_n[None, :] * stride_vn
        v0 = tl.load(v_ptrs, mask=g_ok, other=0.0)
        v1 = tl.load(v_ptrs + stride_vk, mask=g_ok, other=0.0)
    # ---- expand to the dense tile: row 4g + p holds v0 if p == i0, v1 if p == i1, else 0
    v0 = repeat_rows(v0, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
    v1 = repeat_rows(v1, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
    nib = repeat_rows(nib, 4, BLOCK_SIZE_K, BLOCK_SIZE_N)
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
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    """y[M, N] = x[M, K] @ W[K, N], W expanded tile by tile from the 2:4 storage."""
    # ---------------------------------------------------------------- pid mapping (tutorial 03)
    # Grouped ordering: GROUP_SIZE_M row tiles sweep the same W column tiles while they are in L2.
    pid_m, pid_n = grouped_pid(
        tl.program_id(axis=0), tl.cdiv(M, BLOCK_SIZE_M), tl.cdiv(N, BLOCK_SIZE_N), GROUP_SIZE_M
    )

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
        acc = dot_acc(a, w, acc, DOT_FP32)
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
    DOT_FP32: tl.constexpr,
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
        acc = dot_acc(a, w, acc, DOT_FP32)
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
    GROUP_SIZE_M: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    """dx[M, K] = dy[M, N] @ W[K, N]ᵀ; here N is the contracted dimension."""
    # ---------------------------------------------------------------- pid mapping (tutorial 03)
    # Output tiles over (M, K), grouped along M as in the forward.
    pid_m, pid_k = grouped_pid(
        tl.program_id(axis=0), tl.cdiv(M, BLOCK_SIZE_M), tl.cdiv(K, BLOCK_SIZE_K), GROUP_SIZE_M
    )

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
        acc = dot_acc(g, tl.trans(w), acc, DOT_FP32)
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


def _launch_matmul(call, x2, values, meta, scales, zeros, *, out_dtype, config, dot_fp32=False):
    """Tiled GEMM: y[M, N] in out_dtype."""
    (M, K), N = x2.shape, meta.shape[1]
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k != "SPLIT_K"}
    grid = (triton.cdiv(M, cfg["BLOCK_SIZE_M"]) * triton.cdiv(N, cfg["BLOCK_SIZE_N"]),)
    return call(
        _sparse24_matmul_kernel, grid, x2, *ptrs, M, N, K, K, 1, *strides, N, 1,
        out_shape=jax.ShapeDtypeStruct((M, N), jnp.dtype(out_dtype)),
        DOT_FP32=dot_fp32, **constexprs, **cfg,
    )  # fmt: skip


def _launch_decode(call, x2, values, meta, scales, zeros, *, out_dtype, config, dot_fp32=False):
    """M ≤ 16: split-K partials [SPLIT_K, M, N] in fp32, summed here (deterministic order)."""
    (M, K), N = x2.shape, meta.shape[1]
    if M > DECODE_MAX_M:
        raise ValueError(f"the decode kernel serves M <= {DECODE_MAX_M} rows, got M={M}")
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k != "GROUP_SIZE_M"}
    split_k = cfg.pop("SPLIT_K", None)
    cfg["BLOCK_SIZE_M"] = DECODE_MAX_M  # one 16-row MMA tile (tl.dot's minimum) covers M
    block_n, block_k = cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    if split_k is None:
        split_k = int4_configs.split_k_for(_launch.device_kind(), N, K, block_n, block_k)
    k_per_split = triton.cdiv(triton.cdiv(K, block_k), split_k) * block_k
    split_k = triton.cdiv(K, k_per_split)  # no empty splits
    partial = call(
        _sparse24_decode_kernel, (triton.cdiv(N, block_n), split_k),
        x2, *ptrs, M, N, K, k_per_split, K, 1, *strides, M * N, N, 1,
        out_shape=jax.ShapeDtypeStruct((split_k, M, N), jnp.float32),
        DOT_FP32=dot_fp32, **constexprs, **cfg,
    )  # fmt: skip
    return jnp.sum(jnp.asarray(partial), axis=0).astype(out_dtype)


def _launch_gemv(call, x2, values, meta, scales, zeros, *, out_dtype, config, dot_fp32=False):
    """M ≤ ``int4_configs.gemv_max_m``: the GEMV (no dense tile, no tl.dot); split-K partials
    summed here.

    ``dot_fp32`` is accepted for the launchers' common signature and unused: f32 FMAs only."""
    (M, K), N = x2.shape, meta.shape[1]
    ptrs, _, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k not in ("BLOCK_SIZE_M", "GROUP_SIZE_M")}
    cfg["BLOCK_SIZE_K"] = max(32, cfg["BLOCK_SIZE_K"])  # whole metadata words
    if cfg.get("SPLIT_K") is None:
        cfg["SPLIT_K"] = int4_configs.split_k_for(
            _launch.device_kind(), N, K, cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
        )
    grid = gemv_grid(M, N, K, cfg)
    cfg["SPLIT_K"] = grid[2]
    shfl = compiled(_sparse24_gemv_kernel) and cfg["BLOCK_SIZE_K"] == 32
    dtype = jnp.dtype(x2.dtype).name
    cfg["SELECT_I0"] = lane_table_asm(dtype, 0) if shfl else ""
    cfg["SELECT_I1"] = lane_table_asm(dtype, 1) if shfl else ""
    out = (M, N) if grid[2] == 1 else (grid[2], M, N)
    y = call(
        _sparse24_gemv_kernel, grid, x2, *ptrs, M, K, MAGIC_2_23,
        out_shape=jax.ShapeDtypeStruct(out, jnp.dtype(out_dtype) if grid[2] == 1 else jnp.float32),
        N=N, K=K, **constexprs, **cfg,
    )  # fmt: skip
    return y if grid[2] == 1 else jnp.sum(jnp.asarray(y), axis=0).astype(out_dtype)


def _launch_matmul_bwd(call, dy2, values, meta, scales, zeros, *, config, dot_fp32=False):
    """dx[M, K] = dy @ Wᵀ in dy's dtype (the caller casts dy to x's dtype)."""
    (M, N), K = dy2.shape, meta.shape[0] * 32
    ptrs, strides, constexprs = _weight_operands(values, meta, scales, zeros)
    cfg = {k: v for k, v in config.items() if k != "SPLIT_K"}
    grid = (triton.cdiv(M, cfg["BLOCK_SIZE_M"]) * triton.cdiv(K, cfg["BLOCK_SIZE_K"]),)
    return call(
        _sparse24_matmul_bwd_kernel, grid, dy2, *ptrs, M, N, K, N, 1, *strides, K, 1,
        out_shape=jax.ShapeDtypeStruct((M, K), dy2.dtype),
        DOT_FP32=dot_fp32, **constexprs, **cfg,
    )  # fmt: skip


def launch_sparse24_matmul(call, x2, values, meta, scales, zeros, *, out_dtype, config, **kw):
    """Forward y[M, N]: the decode kernel for M <= DECODE_MAX_M, else the tiled GEMM.

    ``config`` may hold both kernels' keys (an int4_configs entry); each launcher takes its own.
    """
    M, N = x2.shape[0], meta.shape[1]
    if M == 0:
        return jnp.zeros((0, N), out_dtype)
    fmt = "sparse24" if scales is None else "sparse24_int4"
    if M <= int4_configs.gemv_max_m(fmt):
        launch = _launch_gemv
    else:
        launch = _launch_decode if M <= DECODE_MAX_M else _launch_matmul
    return launch(call, x2, values, meta, scales, zeros, out_dtype=out_dtype, config=config, **kw)


def launch_sparse24_matmul_bwd(call, dy2, values, meta, scales, zeros, *, config, **kw):
    """Backward dx[M, K] = dy @ Wᵀ in dy's dtype (the caller casts dy to x's dtype)."""
    M, K = dy2.shape[0], meta.shape[0] * 32
    if M == 0:
        return jnp.zeros((0, K), dy2.dtype)
    return _launch_matmul_bwd(call, dy2, values, meta, scales, zeros, config=config, **kw)
