"""Decode GEMV kernels (M ≤ int4_configs.gemv_max_m): int4 / NF4 / FP4 and 2:4 weights, no tl.dot.

Data contract: as ``int4_kernels.py`` / ``sparse24_kernels.py`` (docs/architecture.md §4), output
pointers last: ``y[M, N]`` in x's dtype when ``SPLIT_K == 1``, else f32 partials ``[SPLIT_K, M, N]``
that the launcher sums (deterministic; no atomics). N and K are constexprs: jax-triton 0.4.1 marks
no scalar divisible by 16, so only a compile-time row stride lets the packed words load 16 bytes at
a time (one compile per layer shape, ~0.5 s); EVEN_N / EVEN_K drop the masks.

Why not tl.dot (gemlite's GEMV idea): at M = 1 an MMA tile wastes 15 of its 16 rows and forces
every dequantized weight through shared memory. Here each thread owns a few packed words per
row of 8 k and several columns, dequantizes them in registers and FMAs them with the matching x,
keeping [BLOCK_SIZE_K/8, BLOCK_SIZE_N] f32 partial sums per row of x (up to 4 rows per int4
program: each tile decoded once); one tl.sum after the K loop. Costs per weight (SASS,
compactlm/benchmarks/sass.py): LOP3 + FADD for the code (``nibble_f32``, the magic-number trick: no
int→float conversion), or for NF4 / FP4 one shift + one SHFL (a register code book,
``codebook_f32``), one FFMA per row of x; per word one shift and one FFMA with the group scale
(the scale multiplies the sum of 8 products, not every weight). The 2:4 GEMV picks the two kept
activations of a group with one SHFL each from per-lane tables (``lane_table``).

Inline PTX (the shuffles) runs only compiled; under the interpreter the same kernels take a
``tl.load`` code-book gather and ``tl.where`` selects (exact, the tested path); the PTX
constants are checked against the PTX ISA's ``shfl.sync`` definition in NumPy
(tests/kernels/test_gemv.py) and the compiled kernels on a GPU by tests/kernels/test_gpu_*.py.

Numerics: W is exact in f32 ((q − z)·s, codebook·absmax): unlike the references, which cast W to
x's dtype first, nothing is rounded to bf16, so on bf16 inputs the GEMV is at least as accurate
as the reference and differs from it by at most W's bf16 rounding (a few 2^-9 relative). In f32
both agree to summation order.
"""

from __future__ import annotations

import triton
import triton.language as tl

from compactlm.kernels._tile_ops import (
    codebook_f32,
    lane_select,
    lane_table,
    nibble_f32,
    nibble_magic,
)


@triton.jit
def _int4_gemv_kernel(
    x_ptr, qweight_ptr, scales_ptr, zeros_ptr, codebook_ptr,
    M, stride_xm, magic,
    y_ptr,
    N: tl.constexpr, K: tl.constexpr, GROUP_SIZE: tl.constexpr, FMT: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    SPLIT_K: tl.constexpr, SHFL_LUT: tl.constexpr,
):  # fmt: skip
    """y[m, N tile] (or partial[split, m]) = x[m, Ks] @ W[Ks, N tile] for the BLOCK_SIZE_M ≤ 4
    rows m of x of this program: W is decoded once per tile and FMA'd with each row (one [ROWS,
    BN] accumulator per row, named: a 3-D [BM, ROWS, BN] tile gets layouts that convert through
    shared memory every iteration).

    SHFL_LUT: NF4 / FP4 codes through ``codebook_f32``'s warp-shuffle table (compiled only)."""
    tl.static_assert(BLOCK_SIZE_M <= 4, "the GEMV holds at most 4 rows of x per program")
    ROWS: tl.constexpr = BLOCK_SIZE_K // 8  # packed words per column per tile
    K_TILES: tl.constexpr = (K + BLOCK_SIZE_K - 1) // BLOCK_SIZE_K
    TILES_PER_SPLIT: tl.constexpr = (K_TILES + SPLIT_K - 1) // SPLIT_K
    EVEN_N: tl.constexpr = N % BLOCK_SIZE_N == 0
    EVEN_K: tl.constexpr = (K % BLOCK_SIZE_K == 0) and (K_TILES % SPLIT_K == 0)

    # -------------------------------------------------------------- pid mapping
    # axis 0: the row m of x, fastest, so that the M ≤ 4 programs sharing a weight tile run
    # side by side and all but the first read it from L2; axis 1: column tile; axis 2: K split.
    pid_m = tl.program_id(axis=0)
    pid_n = tl.program_id(axis=1)
    pid_k = tl.program_id(axis=2)

    # -------------------------------------------------------------- pointer setup
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_r = tl.arange(0, ROWS)
    n_ok = (offs_n < N)[None, :]
    m0 = pid_m * BLOCK_SIZE_M
    x_row = x_ptr + m0 * stride_xm
    # rows m0 + 1 .. m0 + 3 of x where this block has them (a row past M reads as zeros)
    ok1, ok2, ok3 = m0 + 1 < M, m0 + 2 < M, m0 + 3 < M
    sixteen = (magic >> 23) - 134  # 16, opaque to the compiler (magic = 150 << 23)

    # -------------------------------------------------------------- K loop
    acc = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
    acc1 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
    acc2 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
    acc3 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
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
        part1 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
        part2 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
        part3 = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
        for j in tl.static_range(8):
            if EVEN_K:
                xj = tl.load(x_ptrs + j).to(tl.float32)
            else:
                xj = tl.load(x_ptrs + j, mask=x_ok, other=0.0).to(tl.float32)
            if BLOCK_SIZE_M > 1:
                x1j = tl.load(x_ptrs + stride_xm + j, mask=x_ok & ok1, other=0.0).to(tl.float32)
            if BLOCK_SIZE_M > 2:
                x2j = tl.load(x_ptrs + 2 * stride_xm + j, mask=x_ok & ok2, other=0.0)
                x2j = x2j.to(tl.float32)
            if BLOCK_SIZE_M > 3:
                x3j = tl.load(x_ptrs + 3 * stride_xm + j, mask=x_ok & ok3, other=0.0)
                x3j = x3j.to(tl.float32)
            src = words if j < 4 else high
            if FMT == 2:  # NF4 / FP4: 16-entry code book, a register table (one SHFL per code)
                w = codebook_f32(codebook_ptr, src, j % 4, SHFL_LUT)
            elif FMT == 1:
                w = nibble_magic(src, j % 4, False, magic) - (z + 2.0 ** (23 - 4 * (j % 4)))
            else:
                w = nibble_f32(src, j % 4, True, magic)
            part += w * xj
            if BLOCK_SIZE_M > 1:
                part1 += w * x1j
            if BLOCK_SIZE_M > 2:
                part2 += w * x2j
            if BLOCK_SIZE_M > 3:
                part3 += w * x3j
        acc += part * s
        if BLOCK_SIZE_M > 1:
            acc1 += part1 * s
        if BLOCK_SIZE_M > 2:
            acc2 += part2 * s
        if BLOCK_SIZE_M > 3:
            acc3 += part3 * s

    # -------------------------------------------------------------- epilogue
    y_ok = offs_n < N
    y_ptrs = y_ptr + (m0 * N + offs_n if SPLIT_K == 1 else (pid_k * M + m0) * N + offs_n)
    _store_row(y_ptrs, tl.sum(acc, axis=0), y_ok, SPLIT_K)
    if BLOCK_SIZE_M > 1:
        _store_row(y_ptrs + N, tl.sum(acc1, axis=0), y_ok & ok1, SPLIT_K)
    if BLOCK_SIZE_M > 2:
        _store_row(y_ptrs + 2 * N, tl.sum(acc2, axis=0), y_ok & ok2, SPLIT_K)
    if BLOCK_SIZE_M > 3:
        _store_row(y_ptrs + 3 * N, tl.sum(acc3, axis=0), y_ok & ok3, SPLIT_K)


@triton.jit
def _store_row(ptrs, y, mask, SPLIT_K: tl.constexpr):
    """One output row: in y's dtype, or an f32 partial under split-K."""
    if SPLIT_K == 1:
        tl.store(ptrs, y.to(ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(ptrs, y, mask=mask)


def gemv_grid(m: int, n: int, k: int, config: dict) -> tuple[int, int, int]:
    """(rows, column tiles, K splits with none empty)."""
    block_n, block_k, split = config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"], config["SPLIT_K"]
    k_tiles = triton.cdiv(k, block_k)
    split = triton.cdiv(k_tiles, triton.cdiv(k_tiles, split))
    return triton.cdiv(m, config.get("BLOCK_SIZE_M", 1)), triton.cdiv(n, block_n), split


@triton.jit
def _sparse24_gemv_kernel(
    x_ptr, values_ptr, meta_ptr, scales_ptr, zeros_ptr,
    M, stride_xm, magic,
    y_ptr,
    N: tl.constexpr, K: tl.constexpr, INT4: tl.constexpr, HAS_ZEROS: tl.constexpr,
    QUANT_GROUP: tl.constexpr,
    BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr, SPLIT_K: tl.constexpr,
    SELECT_I0: tl.constexpr, SELECT_I1: tl.constexpr,
):  # fmt: skip
    """y[m, N tile] (or partial[split, m]) = x[m, Ks] @ W[Ks, N tile], W in 2:4 storage.

    Per 2:4 group g and column n the kept values v0, v1 multiply x[4g + i0] and x[4g + i1]
    directly (no dense tile): i0, i1 select among the group's 4 x values (two predicated selects
    each; i0 ∈ 0..2, i1 ∈ 1..3). The tile is ROWS metadata words (8 groups = 32 k each) deep.
    int4 values: the compressed rows of one metadata word are two qvalues words (4 groups each);
    QUANT_GROUP (compressed rows per scale) is a multiple of 16, so one scale per metadata word.
    SELECT_I0 / SELECT_I1: ``lane_table_asm`` PTX (compiled kernels, BLOCK_SIZE_K = 32: one word
    deep, so every lane decodes the same groups), or "" for the selects (the interpreter).
    """
    ROWS: tl.constexpr = BLOCK_SIZE_K // 32  # metadata words per column per tile
    SHFL: tl.constexpr = SELECT_I0 != ""
    tl.static_assert(ROWS == 1 or not SHFL, "lane_select needs BLOCK_SIZE_K == 32")
    K_TILES: tl.constexpr = (K + BLOCK_SIZE_K - 1) // BLOCK_SIZE_K
    TILES_PER_SPLIT: tl.constexpr = (K_TILES + SPLIT_K - 1) // SPLIT_K
    EVEN: tl.constexpr = (
        (N % BLOCK_SIZE_N == 0) and (K % BLOCK_SIZE_K == 0) and (K_TILES % SPLIT_K == 0)
    )

    # -------------------------------------------------------------- pid mapping
    pid_m = tl.program_id(axis=0)  # rows fastest, as in _int4_gemv_kernel
    pid_n = tl.program_id(axis=1)
    pid_k = tl.program_id(axis=2)

    # -------------------------------------------------------------- pointer setup
    # 4 columns per thread for every load (int32 meta and words; bf16 values as 8 bytes): one
    # layout for all operands, so nothing is converted through shared memory.
    offs_n = tl.max_contiguous(pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N), 4)
    offs_r = tl.arange(0, ROWS)
    n_ok = (offs_n < N)[None, :]
    x_row = x_ptr + pid_m * stride_xm
    sixteen = (magic >> 23) - 134  # 16, opaque to the compiler (see _int4_gemv_kernel)

    # -------------------------------------------------------------- K loop
    acc = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
    for t in range(TILES_PER_SPLIT):
        k0 = (pid_k * TILES_PER_SPLIT + t) * BLOCK_SIZE_K
        rows = k0 // 32 + offs_r  # metadata word rows
        ok = (rows < K // 32)[:, None] & n_ok
        col = offs_n[None, :]
        if EVEN:
            meta = tl.load(meta_ptr + rows[:, None] * N + col)
        else:
            meta = tl.load(meta_ptr + rows[:, None] * N + col, mask=ok, other=0)
        if INT4:  # qvalues words 2r, 2r + 1: codes of compressed rows 16r .. 16r + 15
            q_ptrs = values_ptr + (2 * rows)[:, None] * N + col
            if EVEN:
                q_lo, q_hi = tl.load(q_ptrs), tl.load(q_ptrs + N)
            else:
                q_lo = tl.load(q_ptrs, mask=ok, other=0)
                q_hi = tl.load(q_ptrs + N, mask=ok, other=0)
            s_off = ((16 * rows) // QUANT_GROUP)[:, None] * N + col
            if EVEN:
                s = tl.load(scales_ptr + s_off).to(tl.float32)
            else:
                s = tl.load(scales_ptr + s_off, mask=ok, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(zeros_ptr + s_off, mask=ok, other=0.0).to(tl.float32)
        x_ptrs = x_row + (32 * rows)[:, None]
        x_ok = (32 * rows < K)[:, None]
        part = tl.zeros((ROWS, BLOCK_SIZE_N), dtype=tl.float32)
        for j in tl.static_range(8):  # the word's 8 groups
            nib = meta >> (4 * j)
            if SHFL:  # x[4g + i0], x[4g + i1] from per-lane tables (one SHFL each)
                valid = (k0 < K).to(tl.int32)
                x_i0 = lane_select(lane_table(x_row + k0 + 4 * j, valid, SELECT_I0), nib, 0)
                x_i1 = lane_select(lane_table(x_row + k0 + 4 * j, valid, SELECT_I1), nib, 1)
            elif EVEN:
                x0 = tl.load(x_ptrs + 4 * j).to(tl.float32)
                x1 = tl.load(x_ptrs + 4 * j + 1).to(tl.float32)
                x2 = tl.load(x_ptrs + 4 * j + 2).to(tl.float32)
                x3 = tl.load(x_ptrs + 4 * j + 3).to(tl.float32)
            else:
                x0 = tl.load(x_ptrs + 4 * j, mask=x_ok, other=0.0).to(tl.float32)
                x1 = tl.load(x_ptrs + 4 * j + 1, mask=x_ok, other=0.0).to(tl.float32)
                x2 = tl.load(x_ptrs + 4 * j + 2, mask=x_ok, other=0.0).to(tl.float32)
                x3 = tl.load(x_ptrs + 4 * j + 3, mask=x_ok, other=0.0).to(tl.float32)
            if not SHFL:
                x_i0 = tl.where((nib & 2) != 0, x2, tl.where((nib & 1) != 0, x1, x0))
                x_i1 = tl.where((nib & 8) != 0, tl.where((nib & 4) != 0, x3, x2), x1)
            if INT4:  # codes of compressed rows 2j, 2j + 1 of this metadata word
                word = q_lo if j < 4 else q_hi
                src = word if j % 4 < 2 else word >> sixteen
                if HAS_ZEROS:
                    v0 = nibble_magic(src, (2 * j) % 4, False, magic) - (
                        z + 2.0 ** (23 - 4 * ((2 * j) % 4))
                    )
                    v1 = nibble_magic(src, (2 * j) % 4 + 1, False, magic) - (
                        z + 2.0 ** (19 - 4 * ((2 * j) % 4))
                    )
                else:
                    v0 = nibble_f32(src, (2 * j) % 4, True, magic)
                    v1 = nibble_f32(src, (2 * j) % 4 + 1, True, magic)
            else:
                v_ptrs = values_ptr + (16 * rows + 2 * j)[:, None] * N + col
                if EVEN:
                    v0 = tl.load(v_ptrs).to(tl.float32)
                    v1 = tl.load(v_ptrs + N).to(tl.float32)
                else:
                    v0 = tl.load(v_ptrs, mask=ok, other=0.0).to(tl.float32)
                    v1 = tl.load(v_ptrs + N, mask=ok, other=0.0).to(tl.float32)
            part += v0 * x_i0  # two statements: two FFMAs (one expression: FMUL, FFMA, FADD)
            part += v1 * x_i1
        if INT4:
            acc += part * s
        else:
            acc += part

    # -------------------------------------------------------------- epilogue
    y = tl.sum(acc, axis=0)
    y_ok = offs_n < N
    if SPLIT_K == 1:
        tl.store(y_ptr + pid_m * N + offs_n, y.to(y_ptr.dtype.element_ty), mask=y_ok)
    else:
        tl.store(y_ptr + (pid_k * M + pid_m) * N + offs_n, y, mask=y_ok)
