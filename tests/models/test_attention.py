"""Blocked causal attention (custom VJP) vs a float64 softmax reference: values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.models.attention import blocked_causal_attention
from tests.tolerances import tol


def _mask(T, window):
    """[T, T]: key s visible from query t iff s <= t and (window) t - s < window, written from
    the definition (transformers' sliding window: `window` keys, the query's own included)."""
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    return (s <= t) & ((t - s < window) if window else True)


def _reference(q, k, v, window=None, scale=None):
    """Causal GQA softmax attention in float64 numpy: query head n reads kv head n // (N/K)."""
    B, T, N, H = q.shape
    G = N // k.shape[2]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) * (scale or H**-0.5)
    s = np.where(_mask(T, window), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


@pytest.mark.parametrize(
    "T, block_size, n_kv_heads",
    [(12, 4, 2), (13, 4, 2), (12, 5, 1), (8, 64, 4), (9, 1, 2)],  # ragged T, one block, MQA, MHA
)
def test_blocked_attention_values_and_grads(T, block_size, n_kv_heads):
    B, N, H = 2, 4, 8
    rng = np.random.default_rng(0)
    q, do = (rng.normal(size=(B, T, N, H)) for _ in range(2))
    k, v = (rng.normal(size=(B, T, n_kv_heads, H)) for _ in range(2))
    f32 = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    out, vjp = jax.vjp(lambda *a: blocked_causal_attention(*a, block_size=block_size), *f32)
    np.testing.assert_allclose(out, _reference(q, k, v), **tol("f32_reorder"))
    # Gradients: the hand-written backward vs autodiff of the float64 reference formula in JAX.
    with jax.enable_x64():
        _, ref_vjp = jax.vjp(
            lambda *a: jnp.asarray(_reference_jnp(*a)), *(jnp.asarray(a) for a in (q, k, v))
        )
        want = ref_vjp(jnp.asarray(do))
    for got_g, want_g in zip(vjp(jnp.asarray(do, jnp.float32)), want, strict=True):
        np.testing.assert_allclose(got_g, want_g, **tol("f32_reorder"))


def _reference_jnp(q, k, v, window=None, scale=None):
    """_reference in jnp (float64 under enable_x64) so that autodiff gives reference gradients."""
    B, T, N, H = q.shape
    G = N // k.shape[2]
    k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    s = jnp.einsum("btnh,bsnh->bnts", q, k) * (scale or H**-0.5)
    s = jnp.where(jnp.asarray(_mask(T, window)), s, -jnp.inf)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), v)


@pytest.mark.parametrize("window, block_size", [(3, 4), (1, 4), (5, 64), (0, 4), (20, 4)])
def test_sliding_window_values_and_grads(window, block_size):
    """Gemma's local layers: a window of w keys (0: none; 1: only itself; 20 > T: causal), as a
    traced value (a scanned layer's flag picks it), and query_pre_attn_scalar's scale."""
    B, T, N, K, H = 2, 11, 4, 2, 8
    rng = np.random.default_rng(1)
    q, do = (rng.normal(size=(B, T, N, H)) for _ in range(2))
    k, v = (rng.normal(size=(B, T, K, H)) for _ in range(2))
    scale = 24**-0.5

    @jax.jit
    def ours(q, k, v, w):
        return blocked_causal_attention(q, k, v, scale=scale, window=w, block_size=block_size)

    f32 = [jnp.asarray(a, jnp.float32) for a in (q, k, v)]
    out, vjp = jax.vjp(lambda *a: ours(*a, jnp.int32(window)), *f32)
    np.testing.assert_allclose(out, _reference(q, k, v, window, scale), **tol("f32_reorder"))
    with jax.enable_x64():
        _, ref_vjp = jax.vjp(
            lambda *a: _reference_jnp(*a, window, scale), *(jnp.asarray(a) for a in (q, k, v))
        )
        want = ref_vjp(jnp.asarray(do))
    for got_g, want_g in zip(vjp(jnp.asarray(do, jnp.float32)), want, strict=True):
        np.testing.assert_allclose(got_g, want_g, **tol("f32_reorder"))
