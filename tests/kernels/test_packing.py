"""packing.py (int4 / NF4 / FP4 half) against independent NumPy computations of the contract."""

import statistics

import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.kernels import packing as P
from tests.tolerances import tol

# ----------------------------------------------------------------------------- NumPy oracles


def np_pack(codes: np.ndarray) -> np.ndarray:
    """Word-by-word NumPy packing: code of row k in bits 4·(k % 8) of word k // 8."""
    k, n = codes.shape
    words = np.zeros((k // 8, n), np.uint32)
    for r in range(k):
        words[r // 8] |= (codes[r].astype(np.int64) & 0xF).astype(np.uint32) << np.uint32(
            4 * (r % 8)
        )
    return words.view(np.int32)


def np_quantize_int4(w: np.ndarray, g: int, symmetric: bool):
    k, n = w.shape
    wg = w.reshape(k // g, g, n).astype(np.float32)
    if symmetric:
        s = np.abs(wg).max(axis=1) / np.float32(7)
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        q = np.clip(np.round(wg / s[:, None]), -8, 7)
        z = None
    else:
        lo = np.minimum(wg.min(axis=1), 0)
        hi = np.maximum(wg.max(axis=1), 0)
        s = ((hi - lo) / np.float32(15)).astype(np.float32)
        s = np.where(s == 0, np.float32(1), s).astype(np.float32)
        z = np.clip(np.round(-lo / s), 0, 15).astype(np.float32)
        q = np.clip(np.round(wg / s[:, None]) + z[:, None], 0, 15)
    return q.reshape(k, n).astype(np.int8), s, z


def np_dequant(codes, scales, zeros, g):
    s = np.repeat(scales, g, axis=0)
    z = 0 if zeros is None else np.repeat(zeros, g, axis=0)
    return (codes.astype(np.float32) - z) * s


def nf4_from_paper() -> np.ndarray:
    """QLoRA Appendix E / bitsandbytes create_normal_map(0.9677083): quantiles of N(0, 1)."""
    offset, ppf = 0.9677083, statistics.NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.sort(np.array(pos + [0.0] + neg))
    return v / v.max()


def e2m1_value(code: int) -> float:
    sign = -1.0 if code & 8 else 1.0
    e, m = (code >> 1) & 3, code & 1
    mag = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
    return sign * mag


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- pack / unpack


@pytest.mark.parametrize("signed", [True, False])
def test_pack_matches_numpy_and_round_trips(rng, signed):
    lo, hi = (-8, 8) if signed else (0, 16)
    codes = rng.integers(lo, hi, (64, 7)).astype(np.int8)
    codes[0, :2] = [lo, hi - 1]  # edge codes −8 / 7 (signed) and 0 / 15 (unsigned)
    codes[7, :2] = [hi - 1, lo]  # ... also in the top nibble, where the sign bit of the word sits
    packed = P.pack_int4(codes)
    assert packed.dtype == jnp.int32 and packed.shape == (8, 7)
    np.testing.assert_array_equal(np.asarray(packed), np_pack(codes))
    np.testing.assert_array_equal(np.asarray(P.unpack_int4(packed, signed=signed)), codes)


def test_pack_takes_numpy_and_int32(rng):
    codes = rng.integers(-8, 8, (16, 3)).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(P.pack_int4(codes)), np_pack(codes))


def test_unpack_bit_exact_for_all_words(rng):
    words = rng.integers(-(2**31), 2**31, (4, 5), dtype=np.int64).astype(np.int32)
    for signed in (True, False):
        codes = np.asarray(P.unpack_int4(words, signed=signed))
        np.testing.assert_array_equal(np.asarray(P.pack_int4(codes)), words)


# ----------------------------------------------------------------------------- int4


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128, None])
def test_int4_quantize_matches_numpy(rng, symmetric, group_size):
    k, n = 256, 12
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:, 0] = 0.0  # an all-zero column: scale 1, codes 0
    qweight, scales, zeros = P.quantize_int4(w, group_size, symmetric=symmetric)
    g = k if group_size is None else group_size
    codes, s, z = np_quantize_int4(w, g, symmetric)
    assert scales.shape == (k // g, n)
    np.testing.assert_array_equal(np.asarray(qweight), np_pack(codes))
    np.testing.assert_allclose(np.asarray(scales), s, **tol("f32_exact"))
    if symmetric:
        assert zeros is None
    else:
        np.testing.assert_array_equal(np.asarray(zeros), z)
    w_hat = np.asarray(P.dequantize_int4(qweight, scales, zeros))
    np.testing.assert_allclose(w_hat, np_dequant(codes, np.asarray(scales), z, g), rtol=0, atol=0)
    # RTN error is at most half a step per group.
    step = np.repeat(s, g, axis=0)
    assert np.all(np.abs(w_hat - w) <= 0.5 * step * (1 + 1e-5) + 1e-7)


def test_int4_edge_codes_dequantize():
    codes = np.array([[-8], [7], [0], [-1], [1], [2], [3], [4]], np.int8)
    scales = np.array([[0.5]], np.float32)
    w = np.asarray(P.dequantize_int4(P.pack_int4(codes), scales))
    np.testing.assert_array_equal(w[:, 0], codes[:, 0] * 0.5)
    ucodes = np.array([[0], [15], [8], [1], [2], [3], [4], [5]], np.int8)
    zeros = np.array([[8.0]], np.float32)
    w = np.asarray(P.dequantize_int4(P.pack_int4(ucodes), scales, zeros))
    np.testing.assert_array_equal(w[:, 0], (ucodes[:, 0] - 8.0) * 0.5)


def test_int4_bf16_scales(rng):
    w = rng.standard_normal((64, 4)).astype(np.float32)
    qweight, scales, _ = P.quantize_int4(w, 32, scale_dtype=jnp.bfloat16)
    assert scales.dtype == jnp.bfloat16
    codes = np.asarray(P.unpack_int4(qweight, signed=True))
    s = np.asarray(scales.astype(jnp.float32))
    np.testing.assert_array_equal(
        np.asarray(P.dequantize_int4(qweight, scales)), codes * np.repeat(s, 32, 0)
    )


# ----------------------------------------------------------------------------- NF4 / FP4


def test_nf4_codebook_is_the_papers():
    book = nf4_from_paper()
    assert book.shape == (16,) and book[7] == 0.0
    np.testing.assert_allclose(P.NF4_CODEBOOK, book, **tol("nf4_table"))


def test_fp4_codebook_is_e2m1():
    values = np.array([e2m1_value(c) for c in range(16)], np.float32)
    np.testing.assert_array_equal(P.FP4_E2M1_VALUES, values)
    np.testing.assert_array_equal(P.FP4_CODEBOOK, values / 6)


@pytest.mark.parametrize("format", ["nf4", "fp4"])
def test_all_16_codes_dequantize(format):
    codes = np.arange(16, dtype=np.int8).reshape(16, 1)
    absmax = np.array([[2.0], [0.25]], np.float32)
    w = np.asarray(P.dequantize(P.pack_int4(codes), absmax, format=format))
    book = P.CODEBOOKS[format]
    np.testing.assert_array_equal(w[:8, 0], book[:8] * 2.0)
    np.testing.assert_array_equal(w[8:, 0], book[8:] * 0.25)


@pytest.mark.parametrize("format", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [64, None])
def test_codebook_quantize_matches_numpy(rng, format, block):
    k, n = 128, 6
    w = rng.standard_normal((k, n)).astype(np.float32)
    qweight, absmax = P.quantize_codebook(w, format, block)
    g = k if block is None else block
    wg = w.reshape(k // g, g, n)
    am = np.abs(wg).max(axis=1)
    book = P.CODEBOOKS[format]
    codes = np.abs((wg / am[:, None])[..., None] - book).argmin(-1).reshape(k, n)
    np.testing.assert_array_equal(np.asarray(absmax), am)
    np.testing.assert_array_equal(np.asarray(P.unpack_int4(qweight, signed=False)), codes)
    w_hat = np.asarray(P.dequantize(qweight, absmax, format=format))
    np.testing.assert_allclose(w_hat, book[codes] * np.repeat(am, g, 0), **tol("f32_exact"))
    # The absmax element of every block is reproduced exactly (code ±1 of the table).
    for col in range(n):
        i = np.abs(w[:g, col]).argmax()
        assert abs(w_hat[i, col]) == pytest.approx(abs(w[i, col]))


# ----------------------------------------------------------------------------- double quant


def test_double_quant_bits_per_parameter():
    # QLoRA §3: 32/64 = 0.5 bits of constants per parameter → 8/64 + 32/(64·256) = 0.127.
    assert P.bits_per_parameter("nf4", 64) == 4.5
    assert P.bits_per_parameter("nf4", 64, double_quant=True) == pytest.approx(4 + 0.127, abs=1e-3)
    exact = P.bits_per_parameter("nf4", 64, double_quant=True, shape=(4096, 4096))
    groups = 4096 * 4096 // 64
    assert exact == (4 * 4096**2 + 8 * groups + 32 * (groups // 256) + 32) / 4096**2
    assert P.bits_per_parameter("int4", 128, affine=True, scale_bits=16) == 4 + 32 / 128


def test_double_quant_round_trip(rng):
    absmax = np.abs(rng.standard_normal((10, 60))).astype(np.float32)  # 600: a ragged last block
    dq = P.double_quantize(absmax)
    assert dq.codes.dtype == jnp.int8 and dq.codes.shape == absmax.shape
    assert dq.scales.shape == (3,)
    back = np.asarray(P.double_dequantize(dq))
    flat = absmax.reshape(-1) - absmax.mean()
    blocks = np.pad(flat, (0, 168)).reshape(3, 256)
    half_step = np.repeat(np.abs(blocks).max(1) / 127 / 2, 256)[:600].reshape(absmax.shape)
    assert np.all(np.abs(back - absmax) <= half_step * (1 + 1e-5) + 1e-7)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_problem():
    w = np.zeros((64, 4), np.float32)
    with pytest.raises(ValueError, match="divisible by 8"):
        P.quantize_int4(np.zeros((12, 4), np.float32), None)
    with pytest.raises(ValueError, match="not divisible by group_size=64"):
        P.quantize_int4(np.zeros((96, 4), np.float32), 64)
    with pytest.raises(ValueError, match="valid choices: 32, 64, 128, 256"):
        P.quantize_int4(w, 48)
    with pytest.raises(ValueError, match="unknown format 'int8'.*int4, nf4, fp4"):
        P.quantize(w, "int8")
    with pytest.raises(ValueError, match="float array"):
        P.quantize_int4(np.zeros((64, 4), np.int32), 32)
    with pytest.raises(ValueError, match="integer array"):
        P.pack_int4(w)
    with pytest.raises(ValueError, match="qweight must be int32"):
        P.dequantize_int4(np.zeros((8, 4), np.int64), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="does not fit qweight"):
        P.dequantize_int4(np.zeros((8, 4), np.int32), np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="no zero point"):
        P.dequantize(np.zeros((8, 4), np.int32), np.ones((2, 4)), np.ones((2, 4)), format="nf4")
    with pytest.raises(ValueError, match="affine needs format='int4'"):
        P.quantize(w, "nf4", symmetric=False)
