"""Decode GEMV kernels (gemv_kernels.py) in the interpreter vs the references; the magic trick."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import triton
import triton.language as tl

from compactlm.kernels import int4_kernels as IK
from compactlm.kernels import int4_matmul as I
from compactlm.kernels import packing as P
from compactlm.kernels._interpret import interpret_call
from compactlm.kernels._tile_ops import (
    MAGIC_2_23,
    SELECT_SHFL_0,
    SELECT_SHFL_1,
    SHFL_LUT_ASM,
    lane_table_asm,
    nibble_f32,
)
from tests.tolerances import tol

pytestmark = pytest.mark.filterwarnings(
    "ignore:Conversion of an array with ndim:DeprecationWarning"
)


@triton.jit
def _nibbles_kernel(words_ptr, magic, out_ptr, SIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """out[p, i] = nibble_f32(words[i], p) for p = 0..4, and of words >> 16 for p = 5..8."""
    offs = tl.arange(0, BLOCK)
    w = tl.load(words_ptr + offs)
    for p in tl.static_range(5):
        tl.store(out_ptr + p * BLOCK + offs, nibble_f32(w, p, SIGNED, magic))
    for p in tl.static_range(4):
        tl.store(out_ptr + (5 + p) * BLOCK + offs, nibble_f32(w >> 16, p, SIGNED, magic))


@pytest.mark.parametrize("signed", [True, False])
def test_magic_number_nibbles_are_exact(signed):
    """Every code 0..15 at every position the kernels use, against NumPy's shift-and-mask."""
    rng = np.random.default_rng(0)
    codes = np.stack([np.arange(16)] * 8, axis=1)  # [16, 8]: code c in all 8 nibbles
    codes = np.concatenate([codes, rng.integers(0, 16, (112, 8))])  # and random words
    words = (codes.astype(np.uint32) << (4 * np.arange(8, dtype=np.uint32))).sum(axis=1)
    words = words.astype(np.uint32).view(np.int32)
    out = interpret_call(_nibbles_kernel, (1,), words, MAGIC_2_23,
                         out_shape=((9, 128), np.float32), SIGNED=signed, BLOCK=128)  # fmt: skip
    want = codes - 16 * (codes >= 8) if signed else codes
    positions = [0, 1, 2, 3, 4, 4, 5, 6, 7]  # row 5 re-reads code 4 from words >> 16
    np.testing.assert_array_equal(out, want[:, positions].T.astype(np.float32))
    # The formulation for position 0: ((w & 0xF) ^ 0x4B000008) as f32, minus 8388616.
    if signed:
        bits = ((words & 0xF) ^ 0x4B000008).astype(np.int32).view(np.float32)
        np.testing.assert_array_equal(bits - np.float32(8388616.0), out[0])


def _shfl_idx(values, b, c):
    """PTX ISA ``shfl.sync.idx.b32 d, a, b, c`` over one full warp: values[lane] is each lane's
    a, b[lane] its source-lane operand; the ISA's pseudo-code, verbatim."""
    segmask, clamp = (c >> 8) & 0x1F, c & 0x1F
    lane = np.arange(32)
    min_lane = lane & segmask
    max_lane = min_lane | (clamp & ~segmask)
    j = min_lane | (b & 0x1F & ~segmask)
    return values[np.where(j <= max_lane, j, lane)]


@pytest.mark.parametrize("format", ["nf4", "fp4"])
def test_shuffle_table_looks_up_every_code(format):
    """codebook_f32's compiled path (inline PTX: the interpreter cannot run it) by its PTX
    semantics: lane l holds book[l & 15]; shfl with the asm's c reads book[b & 15] for any upper
    bits of b (the kernel passes src >> 4P unmasked). What stays untested without a GPU is the
    hardware itself (tests/kernels/test_gpu_int4.py runs NF4 / FP4 GEMVs on one)."""
    asm = SHFL_LUT_ASM.value
    c = _shfl_c(asm)
    assert "and.b32 l, l, 15;" in asm and "mad.wide.u32 a, l, 4, $1;" in asm
    book = P.CODEBOOKS[format]
    lane_values = book[np.arange(32) & 15]
    rng = np.random.default_rng(3)
    for p in range(8):  # every code at every nibble position, under random upper bits
        codes = np.concatenate([np.arange(16), rng.integers(0, 16, 16)])
        words = rng.integers(-(2**31), 2**31, 32, dtype=np.int64)
        words = (words & ~(0xF << (4 * p))) | (codes << (4 * p))
        b = (words.astype(np.int32) >> (4 * p)).astype(np.int64)  # arithmetic, as in the kernel
        got = _shfl_idx(lane_values, b, c)
        np.testing.assert_array_equal(got.view(np.uint32), book[codes].view(np.uint32))


def _shfl_c(asm):
    (c,) = re.findall(r"shfl\.sync\.idx\.b32 \$0, \S+, \$2, (0x[0-9a-f]+), -1;", asm)
    return int(c, 16)


# lane_table_asm's per-lane index instructions, as NumPy (the only two it emits).
LANE_INDEX = {"and.b32 l, l, 3;": lambda lane: lane & 3,
              "bfe.u32 l, l, 2, 2;": lambda lane: (lane >> 2) & 3}  # fmt: skip


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_lane_tables_select_the_kept_activations(dtype):
    """The 2:4 GEMV's compiled selection (inline PTX, not run by the interpreter) by its PTX
    semantics: table t's lane l holds x[p + index_t(l)]; the shuffle with c_t from any lane then
    reads x[p + i0] (t = 0) or x[p + i1] (t = 1) for every valid nibble i0 | i1 << 2 (i0 < i1)
    under random upper bits (the kernel passes meta >> 4j unmasked)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(4).astype(np.float32)
    pairs = [(i0, i1) for i1 in range(4) for i0 in range(i1)]
    for t, shfl in enumerate((SELECT_SHFL_0.value, SELECT_SHFL_1.value)):
        asm = lane_table_asm(dtype, t)
        (index,) = [v for key, v in LANE_INDEX.items() if key in asm]
        size = {"bfloat16": 2, "float16": 2, "float32": 4}[dtype]
        assert f"mad.wide.u32 a, l, {size}, $1;" in asm and "@q ld.global.nc" in asm
        table = x[index(np.arange(32))]
        for i0, i1 in pairs:
            nib = (rng.integers(0, 2**27, 32) << 4) | (i0 | i1 << 2)
            got = _shfl_idx(table, nib, _shfl_c(shfl))
            np.testing.assert_array_equal(got, np.full(32, x[(i0, i1)[t]]))


VARIANTS = [("int4", True), ("int4", False), ("nf4", True), ("fp4", True)]
VARIANT_IDS = ["int4_sym", "int4_affine", "nf4", "fp4"]
# (M, N, K, G, SPLIT_K): ragged N (40 vs BN = 16), ragged K (200 vs BK = 64: the last split is
# short), G = 32 < BK (the launcher caps BK at G), per-channel groups on ragged K, 1-3 splits,
# M = 1..4 (one program per tile holds all rows), M = 6 (a full and a half-empty row block).
CASES = [
    (1, 48, 256, 32, 1),
    (1, 40, 200, None, 2),
    (3, 40, 192, 64, 3),
    (4, 32, 256, 32, 2),
    (2, 24, 136, None, 1),
    (6, 24, 64, 32, 1),
]
CONFIG = dict(BLOCK_SIZE_N=16, BLOCK_SIZE_K=64, num_warps=4, num_stages=2)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_int4_gemv_matches_reference(variant, case):
    (format, symmetric), (m, n, k, g, split) = variant, case
    rng = np.random.default_rng(1)
    w = rng.standard_normal((k, n)).astype(np.float32)
    qw, s, z = (None if a is None else np.asarray(a)
                for a in P.quantize(w, format, g, symmetric=symmetric))  # fmt: skip
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = IK.launch_int4_gemv(interpret_call, x, qw, s, z, format=format,
                              config=dict(CONFIG, SPLIT_K=split))  # fmt: skip
    want = I.reference_int4_matmul(jnp.asarray(x), qw, s, z, format=format)
    np.testing.assert_allclose(got, want, **tol("int4_kernel"))


def test_int4_gemv_stores_activation_dtype_without_split():
    rng = np.random.default_rng(2)
    qw, s, _ = P.quantize(rng.standard_normal((64, 32)).astype(np.float32), "int4", 32)
    x = rng.standard_normal((1, 64)).astype(np.float16)
    got = IK.launch_int4_gemv(interpret_call, x, np.asarray(qw), np.asarray(s), None,
                              format="int4", config=dict(CONFIG, SPLIT_K=1))  # fmt: skip
    assert got.dtype == np.float16
    want = I.reference_int4_matmul(jnp.asarray(x), qw, s, format="int4")
    np.testing.assert_allclose(got.astype(np.float32), np.asarray(want, np.float32),
                               **tol("int4_kernel", "float16"))  # fmt: skip
