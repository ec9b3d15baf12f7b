"""Decode GEMV kernels (M ≤ GEMV_MAX_M rows): int4 / NF4 / FP4 and 2:4 weights, no tl.dot.

Data contract: as ``int4_kernels.py`` / ``sparse24_kernels.py`` (DESIGN.md §3), output pointers
last: ``y[M, N]`` in x's dtype when ``SPLIT_K == 1``, else f32 partials ``[SPLIT_K, M, N]`` that
the launcher sums (deterministic; no atomics). N and K are constexprs: jax-triton 0.4.1 marks no
scalar divisible by 16, so only a compile-time row stride lets the packed words load 16 bytes at
a time (one compile per layer shape, ~0.5 s); EVEN_N / EVEN_K drop the masks.

Why not tl.dot (gemlite's GEMV idea): at M = 1 an MMA tile wastes 15 of its 16 rows and forces
every dequantized weight through shared memory. Here each thread owns a few packed words per
row of 8 k and several columns, dequantizes them in registers and FMAs them with the matching x,
keeping [M, BLOCK_SIZE_K/8, BLOCK_SIZE_N] f32 partial sums; one tl.sum after the K loop. Costs
per weight (SASS, compactlm/eval/sass.py): LOP3 + FADD for the code (``nibble_f32``, the
magic-number trick: no int→float conversion), one FFMA with x; per word one shift and one FFMA
with the group scale (the scale multiplies the sum of 8 products, not every weight).

Numerics: W is exact in f32 ((q − z)·s, codebook·absmax): unlike the references, which cast W to
x's dtype first, nothing is rounded to bf16, so on bf16 inputs the GEMV is at least as accurate
as the reference and differs from it by at most W's bf16 rounding (a few 2^-9 relative). In f32
both agree to summation order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from compactlm.kernels._tile_ops import nibble_f32, nibble_magic


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr,
    M, stride_xm, magic,
    y_ptr,
    N: tl.constexpr, K: tl.constexpr, GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """y[m, N tile] (or partial[split, m]) = x[m, Ks] @ W[Ks, N tile]; one row m per program."""
    ROWS: tl.constexpr = BLOCK_SIZE_K // 8  # packed words per column per tile
    K_TILES: tl.constexpr = (K + BLOCK_SIZE_K - 1) // BLOCK_SIZE_K
    TILES_PER_SPLIT: tl.constexpr = (K_TILES + SPLIT_K - 1) // SPLIT_K
    EVEN_N: tl.constexpr = N % BLOCK_SIZE_N == 0
    EVEN_K: tl.constexpr = (K % BLOCK_SIZE_K == 0) and (K_TILES % SPLIT_K == 0)

    # -------------------------------------------------------------- pid mapping
    # axis 0: column tile; axis 1: K split; axis 2: the row m of x (M ≤ 4: the weight tile is
    # re-read from L2 by the M programs that share it).
    pid_n = tl.program_id(axis=0)
    pid_k = tl.program_id(axis=1)
    pid_m = tl.program_id(axis=2)

    # -------------------------------------------------------------- pointer setup
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_r = tl.arange(0, ROWS)
    n_ok = (offs_n < N)[None, :]
    x_row = x_ptr + pid_m * stride_xm
    sixteen = (magic >> 23) - 134  # 16, opaque to the compiler (magic = 150 << 23)

    # -------------------------------------------------------------- K loop
    acc = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
    for t in range(TILES_PER_SPLIT):
        k0 = (pid_k * TILES_PER_SPLIT + t) * BLOCK_SIZE_K
        rows = k0 // 8 + offs_r  # packed word rows of the tile
        w_ptrs = qweight_ptr + rows[:, None] * N + offs_n[None, :]
        k_ok = (rows < K // 8)[:, None]
        if EVEN_N and EVEN_K:
            words = tl.load(w_ptrs)
        else:
            words = tl.load(w_ptrs, mask=k_ok & n_ok, other=0)
        # Codes 4..7 at bits 0, 4, 8, 12: one shift per word. By a run-time 16: with a literal,
        # LLVM sinks the shift into each nibble's mask (a shift + bit-field extract per code).
        high = words >> sixteen
        x_ptrs = x_row + (k0 + 8 * offs_r)[:, None]
        x_ok = (k0 + 8 * offs_r < K)[:, None]
        # ---- the tile's scales (and zeros): one per word, in the words' layout (a [1, BN] row
        # would get a layout of its own and a shared-memory conversion of the partial sums every
        # iteration); 4 per thread; rows of one group load the same addresses (ptxas merges them)
        s_cols = tl.max_contiguous(offs_n, 4)[None, :]
        s_off = ((k0 + 8 * offs_r) // GROUP_SIZE)[:, None] * N + s_cols
        s_ok = n_ok & k_ok
        if EVEN_N and EVEN_K:
            s = tl.load(scales_ptr + s_off).to(tl.float32)
        else:
            s = tl.load(scales_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
        if FMT == 1:  # affine: (q − z) = (2^(23−4P) + q) − (2^(23−4P) + z), exact for integer z
            if EVEN_N and EVEN_K:
                z = tl.load(zeros_ptr + s_off).to(tl.float32)
            else:
                z = tl.load(zeros_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
        # ---- the word's 8 codes times x, then the group scale times their sum
        part = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
        for j in tl.static_range(8):
            if EVEN_K:
                xj = tl.load(x_ptrs + j).to(tl.float32)
            else:
                xj = tl.load(x_ptrs + j, mask=x_ok, other=0.0).to(tl.float32)
            src = words if j < 4 else high
            if FMT == 2:  # NF4 / FP4: 16-entry code book (64 bytes, one L1 line)
                w = tl.load(codebook_ptr + ((src >> (4 * (j % 4))) & 0xF))
            elif FMT == 1:
                w = nibble_magic(src, j % 4, False, magic) - (z + 2.0 ** (23 - 4 * (j % 4)))
            else:
                w = nibble_f32(src, j % 4, True, magic)
            part += w * xj
        acc += part * s

    # -------------------------------------------------------------- epilogue
    y = tl.sum(acc, axis=0)
    y_ok = offs_n < N
    if SPLIT_K == 1:
        tl.store(y_ptr + pid_m * N + offs_n, y.to(y_ptr.dtype.element_ty), mask=y_ok)
    else:
        tl.store(y_ptr + (pid_k * M + pid_m) * N + offs_n, y, mask=y_ok)


def gemv_grid(m: int, n: int, k: int, config: dict) -> tuple[int, int, int]:
    """(column tiles, K splits with none empty, rows)."""
    block_n, block_k, split = config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"], config["SPLIT_K"]
    k_tiles = triton.cdiv(k, block_k)
    split = triton.cdiv(k_tiles, triton.cdiv(k_tiles, split))
    return triton.cdiv(n, block_n), split, m
