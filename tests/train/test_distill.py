"""Distillation losses against NumPy computations from their definitions (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from compactlm.train.distill import (
    LOSSES,
    DistillConfig,
    DistillLoss,
    divergence,
    top_k_buckets,
)
from tests.tolerances import tol

# ---------------------------------------------------------------------------------------------
# NumPy references, written from the definitions (module docstring of train/distill.py).
# ---------------------------------------------------------------------------------------------


def np_softmax(z, T=1.0):
    z = np.asarray(z, np.float64) / T
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
    return terms.sum(-1)


def np_divergence(p, q, loss, beta=0.5, skew=0.1):
    if loss == "fkl":
        return np_kl(p, q)
    if loss == "rkl":
        return np_kl(q, p)
    if loss == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)
    if loss == "skl":
        return np_kl(p, skew * p + (1 - skew) * q)
    if loss == "srkl":
        return np_kl(q, skew * q + (1 - skew) * p)
    if loss == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    raise AssertionError(loss)


def np_buckets(p, q, k):
    """Top-k teacher buckets + tail, one row at a time (argsort, no shared code with the lib)."""
    out_p, out_q = [], []
    for pr, qr in zip(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]), strict=True):
        top = np.argsort(-pr, kind="stable")[:k]
        rest = np.setdiff1d(np.arange(pr.size), top)
        out_p.append(np.append(pr[top], pr[rest].sum()))
        out_q.append(np.append(qr[top], qr[rest].sum()))
    return np.array(out_p), np.array(out_q)


def logits_pair(seed, shape=(3, 5, 64), spread=3.0, near_zero=True):
    """Random teacher/student logits; the teacher gets near-zero probabilities (logit −40 → p
    ~ e^-43: ~1e-19) in a few tokens of every row so the 0·log 0 paths are exercised."""
    rng = np.random.default_rng(seed)
    t = rng.normal(0, spread, shape).astype(np.float32)
    s = rng.normal(0, spread, shape).astype(np.float32)
    if near_zero:
        t[..., :4] = -40.0
        s[..., 4:6] = -30.0
    return t, s


def lib_div(t, s, loss, T=1.0, **kw):
    log_p = jax.nn.log_softmax(jnp.asarray(t) / T, -1)
    log_q = jax.nn.log_softmax(jnp.asarray(s) / T, -1)
    return np.asarray(divergence(log_p, log_q, loss, **kw))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("T", [1.0, 2.5])
def test_divergence_matches_numpy_definition(loss, T):
    t, s = logits_pair(0)
    got = lib_div(t, s, loss, T=T, beta=0.3, skew=0.2)
    want = np_divergence(np_softmax(t, T), np_softmax(s, T), loss, beta=0.3, skew=0.2)
    np.testing.assert_allclose(got, want, **tol("divergence"))
    assert np.all(got >= -1e-6)


@pytest.mark.parametrize("loss", ["fkl", "jsd", "skl", "srkl", "tvd"])
def test_gradient_finite_where_teacher_probability_is_zero(loss):
    # Exact zeros in p (teacher logit −inf). rkl is excluded on purpose: KL(q ‖ p) is +inf when
    # p_v = 0 < q_v — a property of the divergence, not of the implementation.
    t, s = logits_pair(1, near_zero=False)
    t[..., :5] = -np.inf
    log_p = jax.nn.log_softmax(jnp.asarray(t), -1)

    def f(s):
        return divergence(log_p, jax.nn.log_softmax(s, -1), loss).mean()

    value, grad = jax.value_and_grad(f)(jnp.asarray(s))
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    want = np_divergence(np_softmax(t), np_softmax(s), loss).mean()
    np.testing.assert_allclose(float(value), want, **tol("divergence"))
    # and through the top-k tail bucket
    log_pb, log_qb = top_k_buckets(log_p, jax.nn.log_softmax(jnp.asarray(s), -1), 8)
    assert np.all(np.isfinite(np.asarray(divergence(log_pb, log_qb, loss))))


def test_jsd_limits_and_conventions():
    # Moderate logits: the O(β) remainder of jsd/β − KL(p ‖ q) scales with Σ p²/q, which
    # near-zero student probabilities make arbitrarily large (the limit is not uniform).
    t, s = logits_pair(2, spread=1.0, near_zero=False)
    fkl, rkl = lib_div(t, s, "fkl"), lib_div(t, s, "rkl")
    # β → 0: jsd(β) = β·KL(p‖q) + O(β²), so jsd/β → fkl; the error shrinks linearly in β
    # (measured: ~8·β relative here).
    for beta in (1e-3, 1e-4):
        np.testing.assert_allclose(lib_div(t, s, "jsd", beta=beta) / beta, fkl, rtol=20 * beta)
    # β → 1: jsd/(1−β) → rkl.
    for eps in (1e-3, 1e-4):
        ratio = lib_div(t, s, "jsd", beta=1 - eps) / eps
        np.testing.assert_allclose(ratio, rkl, rtol=20 * eps)
    # The endpoints themselves (TRL's convention): β = 0 is fkl, β = 1 is rkl.
    np.testing.assert_array_equal(lib_div(t, s, "jsd", beta=0.0), fkl)
    np.testing.assert_array_equal(lib_div(t, s, "jsd", beta=1.0), rkl)
    # β = ½: symmetric in (p, q) and bounded by ln 2.
    half = lib_div(t, s, "jsd", beta=0.5)
    np.testing.assert_allclose(half, lib_div(s, t, "jsd", beta=0.5), **tol("divergence"))
    assert np.all(half <= math.log(2) + 1e-6)


@pytest.mark.parametrize("loss", ["skl", "srkl"])
@pytest.mark.parametrize("skew", [0.05, 0.1, 0.5])
def test_skew_kl_bounded_by_minus_log_alpha(loss, skew):
    # Adversarial pairs: nearly disjoint supports push the skew KL towards its bound −ln α.
    t, s = logits_pair(3, spread=12.0)
    got = lib_div(t, s, loss, skew=skew)
    t2 = np.full((4, 64), -50.0, np.float32)
    s2 = np.full((4, 64), -50.0, np.float32)
    t2[:, 0], s2[:, 1] = 0.0, 0.0  # p on token 0, q on token 1: KL(p ‖ m) = −ln α exactly
    disjoint = lib_div(t2, s2, loss, skew=skew)
    bound = -math.log(skew)
    assert np.all(got <= bound + 1e-5) and np.all(disjoint <= bound + 1e-5)
    np.testing.assert_allclose(disjoint, bound, rtol=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_top_k_buckets(loss):
    t, s = logits_pair(4, shape=(2, 3, 64))
    p, q = np_softmax(t), np_softmax(s)
    cfg = dict(beta=0.4, skew=0.2)
    log_p = jax.nn.log_softmax(jnp.asarray(t), -1)
    log_q = jax.nn.log_softmax(jnp.asarray(s), -1)
    full = np.asarray(divergence(log_p, log_q, loss, **cfg))
    # k = V is the full loss
    pb, qb = top_k_buckets(log_p, log_q, 64)
    np.testing.assert_allclose(
        np.asarray(divergence(pb, qb, loss, **cfg)), full, **tol("f32_reorder")
    )
    for k in (1, 5, 63):
        pb, qb = top_k_buckets(log_p, log_q, k)
        assert pb.shape == (2, 3, k + 1)
        np.testing.assert_allclose(np.exp(np.asarray(pb)).sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.exp(np.asarray(qb)).sum(-1), 1.0, rtol=1e-5)
        got = np.asarray(divergence(pb, qb, loss, **cfg)).reshape(-1)
        rp, rq = np_buckets(p, q, k)
        np.testing.assert_allclose(got, np_divergence(rp, rq, loss, **cfg), **tol("divergence"))
        # lumping outcomes never increases an f-divergence (data processing inequality)
        assert np.all(got <= full.reshape(-1) + 1e-6)
    # a true divergence: zero when the student equals the teacher
    pb, qb = top_k_buckets(log_p, log_p, 5)
    np.testing.assert_allclose(np.asarray(divergence(pb, qb, loss, **cfg)), 0.0, atol=1e-6)


def test_temperature_squared_scaling():
    t, s = logits_pair(5, near_zero=False)
    targets = jnp.zeros(t.shape[:2], jnp.int32)
    # value: alpha = 1 → the loss is exactly T² · KL at temperature T
    for T in (1.0, 4.0):
        loss, m = DistillLoss(DistillConfig(loss="fkl", temperature=T, alpha=1.0))(
            jnp.asarray(s), jnp.asarray(t), targets
        )
        want = np_kl(np_softmax(t, T), np_softmax(s, T)).mean()
        np.testing.assert_allclose(float(m["distill/divergence"]), want, **tol("divergence"))
        np.testing.assert_allclose(float(loss), T**2 * want, **tol("divergence"))

    # gradient (Hinton §2): for T ≫ |logits|, d(T²·KL)/dz_s → (z_s − z_t − mean(z_s − z_t)) / V
    # per position, independent of T; without T² it would shrink as 1/T².
    def grad_at(T):
        fn = DistillLoss(DistillConfig(loss="fkl", temperature=T, alpha=1.0))
        g = jax.grad(lambda s: fn(s, jnp.asarray(t), targets)[0])(jnp.asarray(s))
        return np.asarray(g) * np.prod(t.shape[:2])  # undo the per-token mean

    d = s.astype(np.float64) - t
    limit = (d - d.mean(-1, keepdims=True)) / t.shape[-1]
    g100, g200 = grad_at(100.0), grad_at(200.0)
    rel = lambda g: np.linalg.norm(g - limit) / np.linalg.norm(limit)  # noqa: E731
    assert rel(g200) < rel(g100) < 0.05, (rel(g100), rel(g200))


def test_mixed_objective_masks_and_metrics():
    t, s = logits_pair(6, shape=(2, 6, 64), near_zero=False)
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 64, (2, 6))
    mask = np.ones((2, 6), np.float32)
    mask[1, 3:] = 0.0
    cfg = DistillConfig(loss="rkl", temperature=2.0, alpha=0.3)
    loss, m = DistillLoss(cfg)(
        jnp.asarray(s), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask)
    )
    keep = mask.astype(bool)
    div = np_kl(np_softmax(s, 2.0), np_softmax(t, 2.0))[keep].mean()
    nll = -np.log(np.take_along_axis(np_softmax(s), targets[..., None], -1)[..., 0])[keep].mean()
    tnll = -np.log(np.take_along_axis(np_softmax(t), targets[..., None], -1)[..., 0])[keep].mean()
    agree = (s.argmax(-1) == t.argmax(-1))[keep].mean()
    np.testing.assert_allclose(float(m["distill/divergence"]), div, **tol("divergence"))
    np.testing.assert_allclose(float(m["distill/ce"]), nll, **tol("divergence"))
    np.testing.assert_allclose(float(m["nll"]), nll, **tol("divergence"))
    np.testing.assert_allclose(float(m["distill/teacher_ce"]), tnll, **tol("divergence"))
    np.testing.assert_allclose(float(m["distill/agreement"]), agree, **tol("f32_exact"))
    np.testing.assert_allclose(float(loss), 0.3 * 4.0 * div + 0.7 * nll, **tol("divergence"))
    # masked positions do not matter
    s2 = s.copy()
    s2[1, 3:] = 1e3
    loss2, _ = DistillLoss(cfg)(
        jnp.asarray(s2), jnp.asarray(t), jnp.asarray(targets), jnp.asarray(mask)
    )
    np.testing.assert_allclose(float(loss2), float(loss), **tol("f32_reorder"))


def _fit_gaussian(loss, mu0, log_sigma0, p):
    """Fit a discretised Gaussian student q_(μ,σ) on the grid to the teacher p by `loss`;
    returns the fitted q's mean and standard deviation on the grid."""
    x = jnp.linspace(-6.0, 6.0, p.size)
    log_p = jnp.log(jnp.asarray(p, jnp.float32))

    def f(theta):
        mu, log_sigma = theta
        log_q = jax.nn.log_softmax(-0.5 * ((x - mu) / jnp.exp(log_sigma)) ** 2)
        return divergence(log_p, log_q, loss)

    tx = optax.adam(0.05)
    theta = jnp.array([mu0, log_sigma0], jnp.float32)

    @jax.jit
    def step(theta, opt):
        g = jax.grad(f)(theta)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(theta, updates), opt

    opt = tx.init(theta)
    for _ in range(600):
        theta, opt = step(theta, opt)
    mu, log_sigma = np.asarray(theta, np.float64)
    q = np.exp(-0.5 * ((np.asarray(x, np.float64) - mu) / np.exp(log_sigma)) ** 2)
    return moments(q / q.sum(), np.asarray(x, np.float64))


def moments(p, x):
    mean = (p * x).sum()
    return mean, np.sqrt((p * (x - mean) ** 2).sum())


def test_toy_bimodal_teacher_fkl_covers_rkl_seeks_a_mode():
    # The MiniLLM picture: teacher = two equal Gaussian bumps at ±2.5 (σ 0.5) on a 1-D grid;
    # student = one discretised Gaussian (an exponential family in x, x² on the grid). FKL's
    # optimum over that family matches the teacher's mean and variance exactly (moment
    # matching: mean 0, std ≈ 2.55, covering both modes); RKL sits on one mode with its width.
    # Tolerances: 600 Adam steps reach both optima to < 1e-5 (measured); 0.03 is margin.
    x = np.linspace(-6.0, 6.0, 241)
    p = np.exp(-0.5 * ((x - 2.5) / 0.5) ** 2) + np.exp(-0.5 * ((x + 2.5) / 0.5) ** 2)
    p /= p.sum()
    mean, std = moments(p, x)
    mu, sigma = _fit_gaussian("fkl", 0.7, 0.0, p)
    assert abs(mu - mean) < 0.03 and abs(sigma - std) < 0.03, (mu, sigma, mean, std)
    mu, sigma = _fit_gaussian("rkl", 0.7, 0.0, p)  # starts nearer the right mode
    assert abs(mu - 2.5) < 0.03 and abs(sigma - 0.5) < 0.03, (mu, sigma)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loss="kld"), "valid: fkl, rkl, jsd, skl, srkl, tvd"),
        (dict(beta=1.5), "distill.beta must be in [0, 1]"),
        (dict(alpha=-0.1), "distill.alpha must be in [0, 1]"),
        (dict(on_policy=2.0), "distill.on_policy must be in [0, 1]"),
        (dict(skew=-1.0), "distill.skew must be in [0, 1]"),
        (dict(temperature=0.0), "distill.temperature must be > 0"),
        (dict(top_k=-1), "distill.top_k must be >= 0"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DistillConfig(**kwargs)


def test_top_k_larger_than_vocab_is_an_error():
    DistillConfig(top_k=64).check_vocab(64)
    with pytest.raises(ValueError, match="exceeds the vocabulary size 64"):
        DistillConfig(top_k=65).check_vocab(64)
