"""int4 / NF4 / FP4 weight-only matmul kernels: raw ``@triton.jit`` GEMM, split-K decode, backward.

Data contract (DESIGN.md §3; the op, its reference and dispatch are in ``int4_matmul.py``):
``x[M, K]`` bf16 / f16 / f32; ``qweight[K/8, N]`` int32, code of row k in bits ``4·(k % 8)``;
``scales[K/G, N]`` (absmax for NF4 / FP4) and, affine int4 only, ``zeros[K/G, N]``; a 16-entry
f32 code book for NF4 / FP4; output pointers last (``y[M, N]``, ``partial[SPLIT_K, M, N]`` f32,
``dx[M, K]``). Each kernel dequantizes to f32 exactly like ``packing.dequantize`` and accumulates
in f32.

Design: the tiled GEMM is Triton's tutorial 03 (grouped pid ordering, masks on every edge); the
in-register unpacking of packed words is gemlite's bitpacking idea; split-K decode is Marlin's.
The launch builders are written once against ``triton_call``'s convention; ``launch`` is
``_launch.triton_call`` on CUDA or ``_interpret.interpret_call`` in the tests.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

from compactlm.kernels.packing import CODEBOOKS

# In-kernel format codes (constexpr FMT).
FMT_INT4_SYM, FMT_INT4_AFFINE, FMT_CODEBOOK = 0, 1, 2


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
