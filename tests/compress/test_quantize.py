"""compress/quantize.py: grids = packing.py's formats, GPTQ = the direct OBS recursion, AWQ."""

import numpy as np
import pytest

from compactlm.compress import quantize as Q
from compactlm.kernels import packing as P


def correlated_inputs(rng, n_tokens: int, k: int, *, outliers: int = 0) -> np.ndarray:
    """Tokens x[n, K] with strongly correlated features (low-rank mixing + noise)."""
    z = rng.normal(size=(n_tokens, k // 4))
    x = z @ rng.normal(size=(k // 4, k)) + 0.1 * rng.normal(size=(n_tokens, k))
    if outliers:
        x[:, rng.choice(k, outliers, replace=False)] *= 20.0
    return x.astype(np.float32)


def hessian(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float64).T @ x) / len(x)


def ref_gptq(w, h, grid: Q.Grid, g: int, damp: float, act_order: bool = False) -> np.ndarray:
    """The OBS update one row at a time from the definition: for the free rows F = {k, …},
    err = (w_k − q_k) / [H_F⁻¹]_kk and w_j −= err · [H_F⁻¹]_jk, with H_F⁻¹ = inv(H[F, F]) computed
    directly (no Cholesky, no blocks, no lazy updates)."""
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    k = len(w)
    h += damp * np.mean(np.diag(h)) * np.eye(k)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    params = {}
    if act_order or g == k:  # static groups from the original weights
        for grp in range(k // g):
            params[grp] = grid.fit(w[grp * g : (grp + 1) * g])
    w, h = w[perm], h[np.ix_(perm, perm)]
    q = np.zeros_like(w)
    for i in range(k):
        grp = perm[i] // g
        if grp not in params:
            params[grp] = grid.fit(w[i : i + g])
        q[i] = grid.round(w[i], *params[grp])
        h_inv = np.linalg.inv(h[i:, i:])
        err = (w[i] - q[i]) / h_inv[0, 0]
        w[i + 1 :] -= np.outer(h_inv[1:, 0], err)
    return q[np.argsort(perm)]


@pytest.mark.parametrize("group_size", [32, 128, None])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_int4_is_packing_format(group_size, symmetric):
    w = np.random.default_rng(0).normal(size=(256, 24)).astype(np.float32)
    fmt = "int4" if symmetric else "int4_affine"
    qw = Q.rtn(w, Q.Grid(fmt, 4), group_size or 0)
    qweight, scales, zeros = P.quantize_int4(w, group_size, symmetric=symmetric)
    packed = qw.pack()
    np.testing.assert_array_equal(packed["qweight"], np.asarray(qweight))
    np.testing.assert_array_equal(packed["scales"], np.asarray(scales))
    if not symmetric:
        np.testing.assert_array_equal(packed["zeros"], np.asarray(zeros))
    deq = P.dequantize(qweight, scales, zeros, format="int4")
    np.testing.assert_array_equal(qw.dequantize(), np.asarray(deq))


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_rtn_codebook_is_packing_format(fmt):
    w = np.random.default_rng(1).normal(size=(128, 16)).astype(np.float32)
    qw = Q.rtn(w, Q.Grid(fmt, 4), 64)
    qweight, absmax = P.quantize_codebook(w, fmt, 64)
    np.testing.assert_array_equal(qw.pack()["qweight"], np.asarray(qweight))
    np.testing.assert_array_equal(qw.scales, np.asarray(absmax))
    np.testing.assert_array_equal(
        qw.dequantize(), np.asarray(P.dequantize(qweight, absmax, format=fmt))
    )


def test_three_bit_codes_fit_the_container():
    w = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32)
    for fmt, lo, hi in (("int4", -4, 3), ("int4_affine", 0, 7)):
        qw = Q.rtn(w, Q.Grid(fmt, 3), 32)
        assert qw.codes.min() >= lo and qw.codes.max() <= hi
        assert len(np.unique(qw.codes)) <= 8
        zeros = qw.pack().get("zeros")
        deq = P.dequantize(qw.pack()["qweight"], qw.pack()["scales"], zeros, format="int4")
        np.testing.assert_array_equal(qw.dequantize(), np.asarray(deq))
    with pytest.raises(ValueError, match="no packed storage"):
        Q.rtn(w, Q.Grid("int4", 8), 32).pack()


@pytest.mark.parametrize(
    "fmt,bits,group_size,act_order",
    [("int4", 4, 32, False), ("int4_affine", 3, 0, False), ("nf4", 4, 32, True)],
)
def test_gptq_equals_direct_obs(fmt, bits, group_size, act_order):
    rng = np.random.default_rng(3)
    k, n = 64, 12
    w = rng.normal(size=(k, n)).astype(np.float32)
    h = hessian(correlated_inputs(rng, 512, k))
    grid = Q.Grid(fmt, bits)
    # block_size 32 < K: the lazy between-block updates are exercised.
    qw = Q.gptq(w, h, grid, group_size, act_order=act_order, damp=0.01, block_size=32)
    ref = ref_gptq(w, h, grid, group_size or k, 0.01, act_order)
    np.testing.assert_array_equal(qw.dequantize(), ref.astype(np.float32))


@pytest.mark.parametrize("bits,group_size", [(3, 0), (4, 128)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, group_size):
    rng = np.random.default_rng(4)
    k, n = 256, 64
    w = rng.normal(size=(k, n)).astype(np.float32)
    h = hessian(correlated_inputs(rng, 2048, k))
    grid = Q.Grid("int4", bits)
    err_rtn = Q.layer_error(w, Q.rtn(w, grid, group_size).dequantize(), h)
    err_gptq = Q.layer_error(w, Q.gptq(w, h, grid, group_size).dequantize(), h)
    assert err_gptq < 0.7 * err_rtn, (err_gptq, err_rtn)


def test_gptq_mask_keeps_pruned_weights_zero():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(64, 8)).astype(np.float32)
    keep = rng.random((64, 8)) < 0.5
    h = hessian(correlated_inputs(rng, 256, 64))
    for fmt in Q.QUANT_FORMATS:
        deq = Q.gptq(w, h, Q.Grid(fmt, 4), 32, mask=keep).dequantize()
        assert (deq[~keep] == 0).all(), fmt


def test_awq_rescaling_preserves_function_and_helps_with_outliers():
    rng = np.random.default_rng(6)
    k, n = 128, 32
    w = rng.normal(size=(k, n)).astype(np.float32)
    x = correlated_inputs(rng, 1024, k, outliers=4)
    h = hessian(x)
    grid = Q.Grid("int4", 3)
    res = Q.awq(w, h, np.abs(x).mean(axis=0), grid, 0)
    s = res.scales
    # Before rounding, x/s @ diag(s) W is x @ W (f32 rounding only).
    np.testing.assert_allclose((x / s) @ (w * s[:, None]), x @ w, rtol=1e-4, atol=1e-3)
    err_rtn = Q.layer_error(w, Q.rtn(w, grid, 0).dequantize(), h)
    err_awq = Q.layer_error(w, res.quantized.dequantize() / s[:, None], h)
    assert res.alpha > 0 and err_awq < 0.8 * err_rtn, (res.alpha, err_awq, err_rtn)


def test_bad_arguments_name_the_choices():
    with pytest.raises(ValueError, match="valid methods: rtn, gptq, awq"):
        Q.QuantConfig(method="hqq")
    with pytest.raises(ValueError, match="valid formats"):
        Q.QuantConfig(format="int3")
    with pytest.raises(ValueError, match="bits=3 is not supported by format 'nf4'"):
        Q.QuantConfig(format="nf4", bits=3)
    with pytest.raises(ValueError, match="group_size=48"):
        Q.QuantConfig(group_size=48)
    with pytest.raises(ValueError, match="does not divide K=96"):
        Q.rtn(np.ones((96, 4), np.float32), Q.Grid(), 64)
