"""int4 / NF4 / FP4 weight-only matmul kernels: raw ``@triton.jit`` GEMM, split-K decode, backward.

Data contract (docs/architecture.md §4; the op, its reference and dispatch are in
``int4_matmul.py``): ``x[M, K]`` bf16 / f16 / f32; ``qweight[K/8, N]`` int32, code of row k in bits
``4·(k % 8)``; ``scales[K/G, N]`` (absmax for NF4 / FP4) and, affine int4 only, ``zeros[K/G, N]``; a
16-entry f32 code book for NF4 / FP4; output pointers last (``y[M, N]``, ``partial[SPLIT_K, M, N]``
f32, ``dx[M, K]``). Each kernel dequantizes to f32 exactly like ``packing.dequantize`` and
accumulates in f32.

Design: the tiled GEMM is Triton's tutorial 03 (grouped pid ordering, masks on every edge); the
in-register unpacking of packed words is gemlite's bitpacking idea; split-K decode is Marlin's.
The launch builders are written once against ``triton_call``'s convention; ``launch`` is
``_launch.triton_call`` on CUDA or ``_interpret.interpret_call`` in the tests.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import triton
import triton.language as tl

from compactlm.kernels import int4_configs
from compactlm.kernels._tile_ops import MAGIC_2_23, compiled, dot_acc, grouped_pid, nibble
from compactlm.kernels.gemv_kernels import _int4_gemv_kernel, gemv_grid
from compactlm.kernels.packing import CODEBOOKS

# In-kernel format codes (constexpr FMT; the kernels compare against the literals, since a
# @triton.jit function may only read tl.constexpr globals).
FMT_INT4_SYM, FMT_INT4_AFFINE, FMT_CODEBOOK = 0, 1, 2


# ============================================================================ W tile


@triton.jit
def _load_int4_tile(
    qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr, k_start, offs_n, K, N,
    stride_qk, stride_qn, stride_sg, stride_sn,
    GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_K: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, SCALED: tl.constexpr = True,
):  # fmt: skip
    """f32 W[k_start : k_start + BLOCK_SIZE_K, offs_n], exactly as packing.dequantize; 0 outside.

    SCALED=False (symmetric int4 / NF4 / FP4 and a tile inside one group, GROUP_SIZE %
    BLOCK_SIZE_K == 0): (q or codebook[q], the tile's [1, BN] scale row), for callers that scale
    the tile's dot instead of every weight: x @ W = (x @ q) · s.

    k_start is a multiple of BLOCK_SIZE_K (itself a multiple of 8). Each packed word is loaded
    once and broadcast over its 8 nibbles ([BK/8, 8, BN]); the row-major reshape puts nibble j
    of word i at row 8·i + j, i.e. row k — the packing contract.
    """
    n_ok = offs_n[None, :] < N
    # ---- codes: one int32 word per 8 rows of k
    offs_kw = k_start // 8 + tl.arange(0, BLOCK_SIZE_K // 8)
    words = tl.load(
        qweight_ptr + offs_kw[:, None] * stride_qk + offs_n[None, :] * stride_qn,
        mask=(offs_kw[:, None] * 8 < K) & n_ok,
        other=0,
    )
    shifts = (tl.arange(0, 8) * 4)[None, :, None]
    q = nibble(words[:, None, :], shifts, FMT == 0)  # FMT_INT4_SYM: signed codes
    q = tl.reshape(q, (BLOCK_SIZE_K, BLOCK_SIZE_N))
    # ---- scales (and zeros) of the tile's quantization groups
    if GROUP_SIZE % BLOCK_SIZE_K == 0:  # the whole tile lies in one group: one scale row
        s_off = (k_start // GROUP_SIZE) * stride_sg + offs_n[None, :] * stride_sn
        s_mask = n_ok & (k_start < K)
    else:  # groups smaller than the tile (or per-channel with ragged K): gather per row
        offs_k = k_start + tl.arange(0, BLOCK_SIZE_K)
        s_off = (offs_k[:, None] // GROUP_SIZE) * stride_sg + offs_n[None, :] * stride_sn
        s_mask = (offs_k[:, None] < K) & n_ok
    scale = tl.load(scales_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
    # ---- dequantize
    if FMT == 0:  # FMT_INT4_SYM
        w = q.to(tl.float32)
    elif FMT == 1:  # FMT_INT4_AFFINE
        zero = tl.load(zeros_ptr + s_off, mask=s_mask, other=0.0).to(tl.float32)
        w = q.to(tl.float32) - zero
    else:  # NF4 / FP4: 16-entry code book (64 bytes, stays in L1)
        w = tl.load(codebook_ptr + q)
    if SCALED:
        return w * scale
    else:
        tl.static_assert(GROUP_SIZE % BLOCK_SIZE_K == 0, "one scale row per tile")
        tl.static_assert(FMT != 1, "affine: the zero point needs the scale per weight")
        return w, scale


# ============================================================================ kernels


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
    """y[M, N] = x[M, K] @ W[K, N], W dequantized tile by tile."""
    # -------------------------------------------------------------- pid mapping (tutorial 03)
    pid_m, pid_n = grouped_pid(
        tl.program_id(axis=0), tl.cdiv(M, BLOCK_SIZE_M), tl.cdiv(N, BLOCK_SIZE_N), GROUP_SIZE_M
    )

    # -------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk

    # -------------------------------------------------------------- K loop
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_start = kb * BLOCK_SIZE_K
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < K - k_start), other=0.0)
        w = _load_int4_tile(
            qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr, k_start, offs_n, K, N,
            stride_qk, stride_qn, stride_sg, stride_sn, GROUP_SIZE, FMT, BLOCK_SIZE_K, BLOCK_SIZE_N,
        )  # fmt: skip
        acc = dot_acc(x, w.to(x.dtype), acc, DOT_FP32)
        x_ptrs += BLOCK_SIZE_K * stride_xk

    # -------------------------------------------------------------- epilogue
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


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
    """partial[s, M, N] = x[:, Ks] @ W[Ks, :] for the K range Ks of split s; M ≤ BLOCK_SIZE_M."""
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
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk

    # -------------------------------------------------------------- K loop (this split only)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for kb in range(0, k_tiles_per_split):
        k_start = k_begin + kb * BLOCK_SIZE_K
        x_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K - kb * BLOCK_SIZE_K)
        x = tl.load(x_ptrs, mask=x_mask, other=0.0)
        # One scale row per tile (and no zero point): scale the tile's dot, not every weight.
        # Affine int4 keeps (q − z) · s per weight: folding z out as rowsum(x) · z costs a
        # cross-thread sum per tile and measured 13.2 SASS/weight against 10.3.
        if GROUP_SIZE % BLOCK_SIZE_K == 0 and FMT != 1:
            q, scale = _load_int4_tile(
                qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr, k_start, offs_n, K, N,
                stride_qk, stride_qn, stride_sg, stride_sn, GROUP_SIZE, FMT, BLOCK_SIZE_K,
                BLOCK_SIZE_N, False,
            )  # fmt: skip
            # q: integers -8..7, exact in x's dtype; NF4 / FP4: the code book, rounded to it
            # (the reference rounds codebook · absmax instead: the same one rounding)
            acc += dot_acc(x, q.to(x.dtype), tl.zeros_like(acc), DOT_FP32) * scale
        else:
            w = _load_int4_tile(
                qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr, k_start, offs_n, K, N,
                stride_qk, stride_qn, stride_sg, stride_sn, GROUP_SIZE, FMT, BLOCK_SIZE_K,
                BLOCK_SIZE_N,
            )  # fmt: skip
            acc = dot_acc(x, w.to(x.dtype), acc, DOT_FP32)
        x_ptrs += BLOCK_SIZE_K * stride_xk

    # -------------------------------------------------------------- epilogue: f32 partial
    p_ptrs = partial_ptr + pid_k * stride_ps + offs_m[:, None] * stride_pm
    p_ptrs += offs_n[None, :] * stride_pn
    tl.store(p_ptrs, acc, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


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
    """dx[M, K] = dy[M, N] @ W[K, N]ᵀ; here N is the contracted dimension."""
    # -------------------------------------------------------------- pid mapping (tutorial 03)
    # Output tiles over (M, K), grouped along M as in the forward.
    pid_m, pid_k = grouped_pid(
        tl.program_id(axis=0), tl.cdiv(M, BLOCK_SIZE_M), tl.cdiv(K, BLOCK_SIZE_K), GROUP_SIZE_M
    )

    # -------------------------------------------------------------- pointer setup
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_k = pid_k * BLOCK_SIZE_K + tl.arange(0, BLOCK_SIZE_K)
    offs_n = tl.arange(0, BLOCK_SIZE_N)
    dy_ptrs = dy_ptr + offs_m[:, None] * stride_dym + offs_n[None, :] * stride_dyn

    # -------------------------------------------------------------- N loop (contracted)
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_K), dtype=tl.float32)
    for nb in range(0, tl.cdiv(N, BLOCK_SIZE_N)):
        n = nb * BLOCK_SIZE_N + offs_n
        dy = tl.load(dy_ptrs, mask=(offs_m[:, None] < M) & (n[None, :] < N), other=0.0)
        w = _load_int4_tile(
            qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr, pid_k * BLOCK_SIZE_K, n, K, N,
            stride_qk, stride_qn, stride_sg, stride_sn, GROUP_SIZE, FMT, BLOCK_SIZE_K, BLOCK_SIZE_N,
        )  # fmt: skip
        acc = dot_acc(dy, tl.trans(w.to(dy.dtype)), acc, DOT_FP32)
        dy_ptrs += BLOCK_SIZE_N * stride_dyn

    # -------------------------------------------------------------- epilogue
    dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    dx_mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=dx_mask)


# ============================================================================ launch builders
# Written once against triton_call's convention; `launch` is _launch.triton_call on CUDA or
# _interpret.interpret_call in the tests, so the interpreter exercises this exact argument list.
# Operands are contiguous row-major, so every stride pair is (columns, 1).


def _weight_operands(qweight, scales, zeros, format: str) -> tuple[tuple, dict]:
    """(pointer operands, constexprs) of the packed W; zeros_ptr is never read unless affine."""
    k = qweight.shape[0] * 8
    if format == "int4":
        fmt = FMT_INT4_SYM if zeros is None else FMT_INT4_AFFINE
    else:
        fmt = FMT_CODEBOOK
    codebook = np.asarray(CODEBOOKS.get(format, np.zeros(16, np.float32)), np.float32)
    ptrs = (qweight, scales, scales if zeros is None else zeros, codebook)
    return ptrs, dict(GROUP_SIZE=k // scales.shape[0], FMT=fmt)


def launch_int4_matmul(
    launch, x, qweight, scales, zeros, *, format: str, config: dict, dot_fp32: bool = False
):
    """Forward ``y[M, N] = x[M, K] @ W``: the split-K decode kernel when ``config`` has
    ``SPLIT_K`` (M ≤ BLOCK_SIZE_M), else the tiled GEMM."""
    (m, k), n = x.shape, qweight.shape[1]
    if m == 0:  # an empty grid is not a valid launch
        return jnp.zeros((0, n), x.dtype)
    ptrs, meta = _weight_operands(qweight, scales, zeros, format)
    common = (x, *ptrs, m, n, k)
    cfg = dict(config, DOT_FP32=dot_fp32)
    if "SPLIT_K" in cfg:  # the decode configuration (int4_configs bucket "decode")
        if m > cfg["BLOCK_SIZE_M"]:
            raise ValueError(
                f"decode kernel takes M <= BLOCK_SIZE_M={cfg['BLOCK_SIZE_M']}, got {m}"
            )
        split = cfg.pop("SPLIT_K")
        g = meta["GROUP_SIZE"]
        if g < cfg["BLOCK_SIZE_K"] and g & (g - 1) == 0:  # one scale row per tile: the
            cfg["BLOCK_SIZE_K"] = g  # per-row scale gather spilled at G = 64 < BK = 128
            split = min(split, triton.cdiv(k, g))
        partial = launch(
            _int4_splitk_kernel, (triton.cdiv(n, cfg["BLOCK_SIZE_N"]), split),
            *common, k, 1, n, 1, n, 1, m * n, n, 1,
            out_shape=((split, m, n), np.float32), SPLIT_K=split, **meta, **cfg,
        )  # fmt: skip
        return partial.sum(axis=0).astype(x.dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_SIZE_M"]) * triton.cdiv(n, cfg["BLOCK_SIZE_N"]),)
    return launch(
        _int4_matmul_kernel, grid, *common, k, 1, n, 1, n, 1, n, 1,
        out_shape=((m, n), x.dtype), **meta, **cfg,
    )  # fmt: skip


def launch_int4_gemv(launch, x, qweight, scales, zeros, *, format: str, config: dict):
    """Decode ``y[M, N] = x[M, K] @ W`` with the GEMV kernel (no tl.dot), any small M: up to
    ``int4_configs.GEMV_ROWS`` rows of x per program (``gemv_rows``), each tile decoded once.

    BLOCK_SIZE_K is capped at the group size so every tile has one scale row (a power of two
    G ≥ 8 divides it); SPLIT_K > 1 writes f32 partials that are summed here (deterministic).
    """
    (m, k), n = x.shape, qweight.shape[1]
    if m == 0:
        return jnp.zeros((0, n), x.dtype)
    ptrs, meta = _weight_operands(qweight, scales, zeros, format)
    cfg = {key: v for key, v in config.items() if key != "GROUP_SIZE_M"}
    cfg.setdefault("SPLIT_K", 1)
    cfg.update(int4_configs.gemv_rows(m, cfg["BLOCK_SIZE_N"]))
    g = meta["GROUP_SIZE"]
    if g < cfg["BLOCK_SIZE_K"] and g & (g - 1) == 0:
        cfg["BLOCK_SIZE_K"] = g
    grid = gemv_grid(m, n, k, cfg)
    cfg["SPLIT_K"] = grid[2]
    out = ((m, n), x.dtype) if grid[2] == 1 else ((grid[2], m, n), np.float32)
    y = launch(_int4_gemv_kernel, grid, x, *ptrs, m, k, MAGIC_2_23, out_shape=out, N=n, K=k,
               SHFL_LUT=compiled(_int4_gemv_kernel), **meta, **cfg)  # fmt: skip
    return y if grid[2] == 1 else y.sum(axis=0).astype(x.dtype)


def launch_int4_matmul_bwd(
    launch, dy, qweight, scales, zeros, *, format: str, config: dict, dot_fp32: bool = False
):
    """Backward ``dx[M, K] = dy[M, N] @ W^T`` with the packed W."""
    (m, n), k = dy.shape, qweight.shape[0] * 8
    if m == 0:
        return jnp.zeros((0, k), dy.dtype)
    ptrs, meta = _weight_operands(qweight, scales, zeros, format)
    grid = (triton.cdiv(m, config["BLOCK_SIZE_M"]) * triton.cdiv(k, config["BLOCK_SIZE_K"]),)
    return launch(
        _int4_matmul_bwd_kernel, grid, dy, *ptrs, m, n, k, n, 1, n, 1, n, 1, k, 1,
        out_shape=((m, k), dy.dtype), DOT_FP32=dot_fp32, **meta, **config,
    )  # fmt: skip
