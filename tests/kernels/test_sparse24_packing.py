"""2:4 structured-sparsity storage: compress / decompress, metadata nibbles, int4+2:4."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from compactlm.kernels import packing

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def random_24(rng, K, N, dtype=np.float32, *, sparse_groups=0.25):
    """A 2:4 matrix with every kind of group: 2 non-zeros, and (a fraction) 1 or 0 non-zeros."""
    w = rng.standard_normal((K, N)).astype(np.float32)
    count = np.where(rng.random((K // 4, N)) > sparse_groups, 2, rng.integers(0, 2, (K // 4, N)))
    rank = np.argsort(np.argsort(rng.random((K // 4, 4, N)), axis=1), axis=1)  # random positions
    keep = rank < count[:, None, :]
    return np.where(keep.reshape(K, N), w, 0).astype(dtype)


def numpy_compress(w):
    """Independent loop implementation of the contract in packing.py's 2:4 banner."""
    K, N = w.shape
    values = np.zeros((K // 2, N), w.dtype)
    meta = np.zeros((K // 32, N), np.uint32)
    for n in range(N):
        for g in range(K // 4):
            nz = [p for p in range(4) if w[4 * g + p, n] != 0]
            assert len(nz) <= 2
            pad = [p for p in range(4) if p not in nz]
            i0, i1 = sorted(nz + pad[: 2 - len(nz)])
            values[2 * g, n], values[2 * g + 1, n] = w[4 * g + i0, n], w[4 * g + i1, n]
            meta[g // 8, n] |= np.uint32(i0 | i1 << 2) << np.uint32(4 * (g % 8))
    return values, meta.view(np.int32)


def bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("K,N", [(32, 1), (64, 7), (128, 33)])
def test_round_trip_bit_exact_and_layout(dtype, K, N):
    rng = np.random.default_rng(K * 1000 + N)
    w = random_24(rng, K, N, DTYPES[dtype])
    values, meta = packing.compress_24(jnp.asarray(w))
    assert values.shape == (K // 2, N) and values.dtype == w.dtype
    assert meta.shape == (K // 32, N) and meta.dtype == jnp.int32
    want_values, want_meta = numpy_compress(w)
    np.testing.assert_array_equal(bits(values), bits(want_values))
    np.testing.assert_array_equal(np.asarray(meta), want_meta)
    np.testing.assert_array_equal(bits(packing.decompress_24(values, meta)), bits(w))
    # The family names are the same functions.
    v2, m2 = packing.pack_24(jnp.asarray(w))
    np.testing.assert_array_equal(bits(packing.unpack_24(v2, m2)), bits(w))


@pytest.mark.parametrize(
    "group,want",
    [
        ([0, 0, 0, 0], (0, 1)),
        ([5, 0, 0, 0], (0, 1)),
        ([0, 5, 0, 0], (0, 1)),
        ([0, 0, 5, 0], (0, 2)),
        ([0, 0, 0, 5], (0, 3)),
        ([0, 5, 0, 6], (1, 3)),
        ([0, 0, 5, 6], (2, 3)),
    ],
)
def test_sparse_groups_get_distinct_sorted_indices(group, want):
    w = np.zeros((32, 2), np.float32)
    w[28:32, 1] = group  # group 7: the nibble sits in bits 28..31, the sign bit of the word
    values, meta = packing.compress_24(jnp.asarray(w))
    i0, i1 = packing.unpack_meta_24(meta)
    assert (int(i0[7, 1]), int(i1[7, 1])) == want
    assert (int(i0[0, 0]), int(i1[0, 0])) == (0, 1)
    assert list(np.asarray(values[14:16, 1])) == [group[want[0]], group[want[1]]]
    assert int(np.asarray(meta)[0, 1]) >> 28 & 0xF == want[0] | want[1] << 2


def test_meta_pack_unpack_all_pairs():
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(pairs), size=(64, 3))
    i0 = np.array([[pairs[j][0] for j in row] for row in idx], np.int32)
    i1 = np.array([[pairs[j][1] for j in row] for row in idx], np.int32)
    meta = packing.pack_meta_24(jnp.asarray(i0), jnp.asarray(i1))
    assert meta.shape == (8, 3)
    u0, u1 = packing.unpack_meta_24(meta)
    np.testing.assert_array_equal(np.asarray(u0), i0)
    np.testing.assert_array_equal(np.asarray(u1), i1)
    word = sum(
        (i0[g::8].astype(np.uint64) | i1[g::8].astype(np.uint64) << 2) << (4 * g) for g in range(8)
    )
    np.testing.assert_array_equal(np.asarray(meta), word.astype(np.uint32).view(np.int32))


def test_refuses_non_24_naming_first_offending_group():
    rng = np.random.default_rng(1)
    w = random_24(rng, 64, 8, sparse_groups=0.0)  # exactly two non-zeros everywhere
    w[20:24, 5] = [1, 2, 3, 0]  # group 5, column 5: 3 non-zeros
    w[20:24, 6] = [1, 2, 3, 4]  # same group, later column: 4
    w[40:44, 0] = [1, 2, 3, 4]  # later group, earlier column
    with pytest.raises(ValueError) as e:
        packing.compress_24(jnp.asarray(w))
    msg = str(e.value)
    assert "group 5 (rows 20..23) of column 5 has 3 non-zeros" in msg
    assert "3 offending group(s)" in msg
    assert packing.find_24_violation(packing.mask_24_magnitude(jnp.asarray(w))) is None


def test_shape_errors():
    with pytest.raises(ValueError, match="K % 32"):
        packing.compress_24(jnp.zeros((48, 4)))
    with pytest.raises(ValueError, match=r"\[K, N\]"):
        packing.compress_24(jnp.zeros((32,)))
    with pytest.raises(ValueError, match="meta shape"):
        packing.decompress_24(jnp.zeros((16, 4)), jnp.zeros((2, 4), jnp.int32))


def test_mask_24_magnitude_keeps_two_largest_ties_to_lower_rows():
    w = (
        np.array(
            [
                [1.0, -4.0, 3.0, 2.0],
                [0.5, 0.5, 0.5, 0.5],
                [0.0, 0.0, -1.0, 0.0],
                [-3.0, 3.0, 1.0, 3.0],
            ]
            * 8,
            np.float32,
        )
        .reshape(8, 4, 4)
        .transpose(0, 2, 1)
        .reshape(32, 4)
    )  # column n = the n-th listed group
    kept = np.asarray(packing.mask_24_magnitude(jnp.asarray(w)))
    np.testing.assert_array_equal(kept[:4, 0], [0, -4, 3, 0])
    np.testing.assert_array_equal(kept[:4, 1], [0.5, 0.5, 0, 0])
    np.testing.assert_array_equal(kept[:4, 2], [0, 0, -1, 0])
    np.testing.assert_array_equal(kept[:4, 3], [-3, 3, 0, 0])
    assert packing.find_24_violation(kept) is None


def test_compress_traces_under_jit_without_check():
    w = jnp.asarray(random_24(np.random.default_rng(2), 64, 5))
    values, meta = jax.jit(lambda a: packing.compress_24(a, check=False))(w)
    with pytest.raises(ValueError, match="under jit pass check=False"):
        jax.jit(packing.compress_24)(w)
    np.testing.assert_array_equal(np.asarray(packing.decompress_24(values, meta)), np.asarray(w))


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_24_round_trip(symmetric):
    K, N, G = 128, 9, 32
    w = random_24(np.random.default_rng(3), K, N)
    qvalues, meta, scales, zeros = packing.quantize_sparse24_int4(
        jnp.asarray(w), G, symmetric=symmetric
    )
    assert qvalues.shape == (K // 16, N) and qvalues.dtype == jnp.int32
    assert scales.shape == (K // 2 // G, N)
    assert (zeros is None) == symmetric
    # Same positions as the plain 2:4 format; values are A's int4 over the compressed axis.
    values, want_meta = packing.compress_24(jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(meta), np.asarray(want_meta))
    want_q, want_s, want_z = packing.quantize_int4(values, G, symmetric=symmetric)
    np.testing.assert_array_equal(np.asarray(qvalues), np.asarray(want_q))
    np.testing.assert_array_equal(np.asarray(scales), np.asarray(want_s))
    w_hat = np.asarray(packing.dequantize_sparse24_int4(qvalues, meta, scales, zeros))
    assert w_hat.dtype == np.float32
    # Pruned and padding slots are exactly 0; kept values are within half a quantization step.
    np.testing.assert_array_equal(w_hat[w == 0], 0)
    step = np.repeat(np.asarray(scales), 2 * G, axis=0)
    assert np.all(np.abs(w_hat - w) <= 0.5 * step * (1 + 1e-6))
