"""``@triton.jit`` building blocks shared by the int4 and 2:4 kernels (Triton inlines them).

What they share is the GEMM skeleton of Triton's tutorial 03 and the packed-weight contract of
DESIGN.md §3: 4-bit codes in int32 words (code j of a word in bits ``4·j``; symmetric int4 is
two's complement, affine int4 and NF4 / FP4 code-book indices are unsigned), expanded in
registers from compact loads (gemlite's bitpacking idea), then one ``tl.dot`` per tile with the
reference's numerics: W cast to the activation dtype, f32 accumulation, IEEE f32 products.
All of them run in the interpreter (``TRITON_INTERPRET=1``) as well as compiled.
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
