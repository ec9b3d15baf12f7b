"""``@triton.jit`` building blocks shared by the int4 and 2:4 kernels (Triton inlines them).

What they share is the GEMM skeleton of Triton's tutorial 03 and the packed-weight contract of
docs/architecture.md §4: 4-bit codes in int32 words (code j of a word in bits ``4·j``; symmetric
int4 is two's complement, affine int4 and NF4 / FP4 code-book indices are unsigned), expanded in
registers from compact loads (gemlite's bitpacking idea), then one ``tl.dot`` per tile with the
reference's numerics: W cast to the activation dtype, f32 accumulation, IEEE f32 products.
All of them run in the interpreter (``TRITON_INTERPRET=1``) as well as compiled, except the
warp-shuffle register tables (inline PTX: ``codebook_f32``'s SHFL path, ``lane_table`` /
``lane_select``), which the launchers enable only for compiled kernels (``compiled()``); tests
check their PTX constants against the PTX ISA's ``shfl.sync`` semantics in NumPy, and the GPU
tier runs them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_SIZE_M: tl.constexpr):
    """(pid_m, pid_n) in tutorial 03's grouped order: GROUP_SIZE_M row tiles sweep the same
    column tiles of W while those stay in L2."""
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def nibble(word, shift, SIGNED: tl.constexpr):
    """The 4-bit code at bit ``shift`` of each int32 in ``word``: -8…7 if SIGNED, else 0…15."""
    if SIGNED:  # move the nibble to the top: the arithmetic shift back sign-extends it
        q = (word << (28 - shift)) >> 28
    else:  # & drops the sign bits that an arithmetic shift of a negative word brings in
        q = (word >> shift) & 0xF
    return q


@triton.jit
def repeat_rows(t, R: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS/R, COLS] → [ROWS, COLS], each row repeated R times, in registers."""
    return tl.reshape(tl.broadcast_to(t[:, None, :], (ROWS // R, R, COLS)), (ROWS, COLS))


@triton.jit
def dot_acc(a, w, acc, DOT_FP32: tl.constexpr):
    """``acc + a @ w`` in f32; ``a`` and ``w`` in the activation dtype (W cast as the reference).

    f32 activations run IEEE: ``tl.dot`` would otherwise round f32 operands to TF32 (10-bit
    mantissa) on Ampere+, while the reference's f32 dot is exact per product. bf16 / f16 keep the
    default (wgmma / mma.sync). DOT_FP32 is for the interpreter, whose bf16 arithmetic is wrong:
    both operands go to f32, where products of f16 / bf16 values are exact.
    """
    if DOT_FP32:
        acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        acc = tl.dot(a, w, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, w, acc)
    return acc


# 2^23 as an f32 bit pattern (exponent field 150): a kernel argument, not a literal, so that
# ptxas keeps it in a register: LOP3 takes one immediate, and (w & mask) ^ magic with both
# immediates costs two LOP3s per weight instead of one.
MAGIC_2_23 = 150 << 23


@triton.jit
def nibble_magic(src, P: tl.constexpr, SIGNED: tl.constexpr, magic):
    """The 4-bit code n at bits ``4P .. 4P + 3`` (P ≤ 4) of each int32 in ``src`` as the exact f32
    ``2^(23 − 4P) + n`` (``+ q + 8`` for signed codes q = n − 16·(n ≥ 8)): one LOP3.

    Marlin's magic-number idea, per position and with no int→float conversion: OR-ing the nibble
    into the mantissa of 2^(23 − 4P), whose ULP is 2^(−4P) there, makes the float 2^(23 − 4P) + n;
    XOR-ing bit 3 of the nibble as well turns a two's-complement q into q + 8. ``magic`` is
    ``MAGIC_2_23`` passed at run time (see there). Subtract ``2^(23 − 4P)`` (+ 8, or + z for an
    integer-valued zero point z: exact) to get the code.
    """
    exponent = magic - ((4 * P) << 23)  # 2^(23 − 4P): a run-time scalar, hoisted by ptxas
    if SIGNED:
        # exponent + flip (disjoint bits) rather than |: LLVM would re-associate the xor of an
        # or and split the P = 0 case into two LOP3s.
        bits = (src & (0xF << (4 * P))) ^ (exponent + (8 << (4 * P)))
    else:
        bits = (src & (0xF << (4 * P))) | exponent
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def nibble_f32(src, P: tl.constexpr, SIGNED: tl.constexpr, magic):
    """The code at bits ``4P .. 4P + 3`` (P ≤ 4) as an exact f32 (−8…7 if SIGNED, else 0…15):
    ``nibble_magic`` minus its bias, one LOP3 + one FADD. For P = 0 and signed codes this is
    ``((w & 0xF) ^ 0x4B000008)`` bitcast, minus 8388616.0."""
    BIAS: tl.constexpr = 2.0 ** (23 - 4 * P) + (8.0 if SIGNED else 0.0)
    return nibble_magic(src, P, SIGNED, magic) - BIAS


def compiled(kernel) -> bool:
    """Whether ``kernel`` is compiled (inline PTX runs) rather than run by Triton's interpreter."""
    return isinstance(kernel, triton.runtime.jit.JITFunction)


# codebook_f32's register table: lane l of every warp holds codebook[l & 15] (one 4-byte load per
# thread, hoisted out of the K loop by ptxas); shfl.sync.idx with c = 0x100f (segment mask 0x10
# in bits 12:8, clamp 0xf) reads lane (laneid & 0x10) | (b & 0xf) per the PTX ISA, so the
# hardware ignores every bit of b above the code: no mask instruction.
SHFL_LUT_ASM = tl.constexpr(
    "{ .reg .b32 l, v; .reg .b64 a; mov.u32 l, %laneid; and.b32 l, l, 15; "
    "mad.wide.u32 a, l, 4, $1; ld.global.nc.b32 v, [a]; "
    "shfl.sync.idx.b32 $0, v, $2, 0x100f, -1; }"
)


@triton.jit
def codebook_f32(codebook_ptr, src, P: tl.constexpr, SHFL: tl.constexpr):
    """``codebook[n]`` (f32, bit-exact) for the code n at bits ``4P .. 4P + 3`` of each int32 in
    ``src``, from the 16-entry f32 table at ``codebook_ptr`` (NF4 / FP4, packing.CODEBOOKS).

    SHFL (compiled kernels only): a register lookup table, one shift + one SHFL per code, the
    idea of the Hopper LUT kernels (KERNEL_ANCHORS.md) with a warp shuffle in place of ``prmt``
    (a 4-byte entry per lane, where ``prmt`` selects bytes). Otherwise a ``tl.load`` per code
    (the interpreter's path, same values): a gather whose pointers get a layout of their own and
    a shared-memory conversion every iteration when compiled (docs/benchmarks.md).
    """
    if SHFL:
        bits = tl.inline_asm_elementwise(
            SHFL_LUT_ASM, "=r,l,r", [codebook_ptr, src >> (4 * P)], dtype=tl.int32,
            is_pure=True, pack=1,
        )  # fmt: skip
        w = bits.to(tl.float32, bitcast=True)
    else:
        w = tl.load(codebook_ptr + ((src >> (4 * P)) & 0xF))
    return w


# lane_select's two tables over a 2:4 group's 4 activations x[p .. p + 3]: lane l of table 0
# holds x[p + (l & 3)] and shfl reads lane (l & 0x1c) | (b & 3) (c = 0x1c03: segment mask 0x1c,
# clamp 3), i.e. x[p + i0] for b = the group's metadata nibble i0 | i1 << 2 (and any bits
# above); table 1 holds x[p + ((l >> 2) & 3)] and reads lane (l & 0x13) | (b & 0xc)
# (c = 0x130c), i.e. x[p + i1]. All lanes of a warp must decode the same group p at once.
_TABLE_INDEX = {0: "and.b32 l, l, 3;", 1: "bfe.u32 l, l, 2, 2;"}
SELECT_SHFL_0 = tl.constexpr("shfl.sync.idx.b32 $0, $1, $2, 0x1c03, -1;")
SELECT_SHFL_1 = tl.constexpr("shfl.sync.idx.b32 $0, $1, $2, 0x130c, -1;")
_TABLE_LOAD = {  # x[p + table index] (0 where $2 == 0: a tile past K) as f32 bits
    "bfloat16": (
        "2",
        ".reg .b16 h; mov.b16 h, 0; @q ld.global.nc.b16 h, [a]; "
        "cvt.u32.u16 $0, h; shl.b32 $0, $0, 16;",
    ),
    "float16": (
        "2",
        ".reg .b16 h; .reg .f32 f; mov.b16 h, 0; @q ld.global.nc.b16 h, [a]; "
        "cvt.f32.f16 f, h; mov.b32 $0, f;",
    ),
    "float32": ("4", "mov.b32 $0, 0; @q ld.global.nc.b32 $0, [a];"),
}


def lane_table_asm(dtype: str, table: int) -> str:
    """PTX of ``lane_select``'s table ``table`` (0: i0, 1: i1) for x in ``dtype`` (bfloat16 /
    float16 / float32): this lane's entry as f32 bits; operands $1 = &x[p], $2 = valid."""
    size, load = _TABLE_LOAD[dtype]
    return (
        "{ .reg .b32 l; .reg .b64 a; .reg .pred q; "
        f"mov.u32 l, %laneid; {_TABLE_INDEX[table]} mad.wide.u32 a, l, {size}, $1; "
        f"setp.ne.s32 q, $2, 0; {load} }}"
    )


@triton.jit
def lane_table(x_group_ptr, valid, ASM: tl.constexpr):
    """This lane's entry of a 2:4 group's x table (``lane_table_asm``), as a SCALAR: a scalar
    is per thread by construction, so no layout conversion can move it to another lane (a
    tensor of per-lane values could be; Triton assumes replicas are equal)."""
    return tl.inline_asm_elementwise(
        ASM, "=r,l,r", [x_group_ptr, valid], dtype=tl.int32, is_pure=True, pack=1
    )


@triton.jit
def lane_select(table, nib, TABLE: tl.constexpr):
    """x[p + i] (f32) per element, i = i0 (TABLE 0) or i1 (TABLE 1) of the metadata nibble
    ``nib`` (any bits above it are ignored), from ``lane_table``'s scalar: one SHFL per element
    instead of 2 compares + 2 selects. Compiled kernels only (inline PTX)."""
    if TABLE == 0:
        asm: tl.constexpr = SELECT_SHFL_0
    else:
        asm: tl.constexpr = SELECT_SHFL_1
    bits = tl.inline_asm_elementwise(
        asm, "=r,r,r", [table, nib], dtype=tl.int32, is_pure=True, pack=1
    )
    return bits.to(tl.float32, bitcast=True)
