"""Blocked causal attention (custom VJP) vs a float64 softmax reference: values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compactlm.models.attention import blocked_causal_attention
from tests.tolerances import tol


def _reference(q, k, v):
    """Causal GQA softmax attention in float64 numpy: query head n reads kv head n // (N/K)."""
    B, T, N, H = q.shape
    G = N // k.shape[2]
    k, v = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
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


def _reference_jnp(q, k, v):
    """_reference in jnp (float64 under enable_x64) so that autodiff gives reference gradients."""
    B, T, N, H = q.shape
    G = N // k.shape[2]
    k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    s = jnp.einsum("btnh,bsnh->bnts", q, k) / jnp.sqrt(H)
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), v)
