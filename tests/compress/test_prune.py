"""compress/prune.py: N:M patterns, Wanda = top-k per output, SparseGPT = the direct OBS sweep."""

import numpy as np
import pytest

from compactlm.compress import prune as PR
from compactlm.compress.quantize import layer_error
from compactlm.kernels import packing as P
from tests.compress.test_quantize import correlated_inputs, hessian


def ref_sparsegpt(w, h, pattern, sparsity, damp, block_size):
    """SparseGPT from the definition, one row at a time. Free rows F = {k, …}; [H_F⁻¹] =
    inv(H[F, F]) computed directly. Saliency of w[j] is w_j² / [H_{F_j}⁻¹]_jj² on the current
    weights, chosen per block of rows (unstructured, over the block) or every M rows (N:M, per
    column)."""
    w = np.array(w, np.float64)
    k, cols = w.shape
    h = np.array(h, np.float64) + damp * np.mean(np.diag(h)) * np.eye(k)
    d2 = np.array([np.linalg.inv(h[j:, j:])[0, 0] for j in range(k)])  # [H_{F_j}⁻¹]_jj
    nm = PR.parse_pattern(pattern)
    keep = np.ones((k, cols), bool)
    q = np.zeros_like(w)
    for i in range(k):
        if nm is None and i % block_size == 0:
            blk = slice(i, i + block_size)
            score = (w[blk] ** 2 / d2[blk, None]).ravel()
            n_keep = int(round((1 - sparsity) * score.size))
            kb = np.zeros(score.size, bool)
            kb[np.argsort(-score, kind="stable")[:n_keep]] = True
            keep[blk] = kb.reshape(-1, cols)
        if nm is not None and i % nm[1] == 0:
            for c in range(cols):
                score = w[i : i + nm[1], c] ** 2 / d2[i : i + nm[1]]
                top = np.argsort(-score, kind="stable")[: nm[0]]
                keep[i : i + nm[1], c] = np.isin(np.arange(nm[1]), top)
        q[i] = np.where(keep[i], w[i], 0.0)
        h_inv = np.linalg.inv(h[i:, i:])
        err = (w[i] - q[i]) / h_inv[0, 0]
        w[i + 1 :] -= np.outer(h_inv[1:, 0], err)
    return q, keep


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "unstructured"])
def test_sparsegpt_equals_direct_obs(pattern):
    rng = np.random.default_rng(0)
    k, n = 64, 10
    w = rng.normal(size=(k, n)).astype(np.float32)
    h = hessian(correlated_inputs(rng, 512, k))
    w_hat, keep = PR.sparsegpt(w, h, pattern, 0.6, damp=0.01, block_size=16)
    ref_w, ref_keep = ref_sparsegpt(w, h, pattern, 0.6, 0.01, 16)
    np.testing.assert_array_equal(keep, ref_keep)
    np.testing.assert_allclose(w_hat, ref_w, rtol=1e-5, atol=1e-5)
    assert (w_hat[~keep] == 0).all()


@pytest.mark.parametrize("method", PR.PRUNE_METHODS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_every_nm_mask_satisfies_the_pattern(method, pattern):
    rng = np.random.default_rng(1)
    k, cols = 64, 16
    w = rng.normal(size=(k, cols)).astype(np.float32)
    x = correlated_inputs(rng, 256, k)
    n, m = PR.parse_pattern(pattern)
    if method == "magnitude":
        keep = PR.magnitude(w, pattern)
    elif method == "wanda":
        keep = PR.wanda(w, np.linalg.norm(x, axis=0), pattern)
    else:
        w, keep = PR.sparsegpt(w, hessian(x), pattern)
    counts = keep.reshape(k // m, m, cols).sum(axis=1)
    assert (counts == n).all() and PR.satisfies_pattern(keep, pattern)
    if pattern == "2:4":
        assert P.find_24_violation(np.where(keep, w, 0)) is None


def test_wanda_is_topk_of_score_per_output():
    rng = np.random.default_rng(2)
    k, cols = 32, 6
    w = rng.normal(size=(k, cols)).astype(np.float32)
    x_norm = rng.random(k).astype(np.float32) * 10
    keep = PR.wanda(w, x_norm, "unstructured", 0.75)
    for c in range(cols):
        score = [abs(float(w[j, c])) * float(x_norm[j]) for j in range(k)]
        top = sorted(range(k), key=lambda j: -score[j])[: k // 4]
        assert set(np.flatnonzero(keep[:, c])) == set(top)
    keep24 = PR.wanda(w, x_norm, "2:4")
    for c in range(cols):
        for g in range(k // 4):
            score = [abs(float(w[4 * g + j, c])) * float(x_norm[4 * g + j]) for j in range(4)]
            top = sorted(range(4), key=lambda j: -score[j])[:2]
            assert set(np.flatnonzero(keep24[4 * g : 4 * g + 4, c])) == set(top)


def test_magnitude_unstructured_hits_the_sparsity():
    w = np.random.default_rng(3).normal(size=(64, 32)).astype(np.float32)
    keep = PR.magnitude(w, "unstructured", 0.3)
    assert keep.sum() == round(0.7 * w.size)
    assert np.abs(w[keep]).min() >= np.abs(w[~keep]).max()


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_sparsegpt_beats_wanda_and_magnitude_on_correlated_inputs(pattern):
    rng = np.random.default_rng(4)
    k, cols = 128, 64
    w = rng.normal(size=(k, cols)).astype(np.float32)
    x = correlated_inputs(rng, 2048, k, outliers=4)
    h = hessian(x)
    err = {
        "magnitude": layer_error(w, w * PR.magnitude(w, pattern), h),
        "wanda": layer_error(w, w * PR.wanda(w, np.linalg.norm(x, axis=0), pattern), h),
        "sparsegpt": layer_error(w, PR.sparsegpt(w, h, pattern)[0], h),
    }
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid methods: magnitude, wanda, sparsegpt"):
        PR.PruneConfig(method="obs")
    with pytest.raises(ValueError, match="valid patterns: unstructured, 2:4, 4:8"):
        PR.PruneConfig(pattern="1:4")
    with pytest.raises(ValueError, match=r"sparsity=1.0 must be in \(0, 1\)"):
        PR.PruneConfig(sparsity=1.0)
    with pytest.raises(ValueError, match="needs K % 8 == 0"):
        PR.magnitude(np.ones((12, 4), np.float32), "4:8")
