"""cuDNN flash attention vs XLA at bf16 on a GPU: GQA, causal, and the whole model ("auto")."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.models.layers import resolve_attention_impl
from compactlm.models.transformer import ModelConfig, Transformer
from tests.tolerances import tol

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu():
    if jax.default_backend() != "gpu":
        pytest.skip(f"needs a GPU; JAX's backend is {jax.default_backend()!r}")


@pytest.mark.parametrize("n_kv_heads", [8, 2, 1])
def test_cudnn_gqa_causal_matches_xla(n_kv_heads):
    B, T, N, H = 2, 256, 8, 64
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (B, T, N, H), jnp.bfloat16)
    k = jax.random.normal(keys[1], (B, T, n_kv_heads, H), jnp.bfloat16)
    v = jax.random.normal(keys[2], (B, T, n_kv_heads, H), jnp.bfloat16)
    attend = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "implementation"))
    got = attend(q, k, v, is_causal=True, implementation="cudnn")
    want = attend(q, k, v, is_causal=True, implementation="xla")
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), **tol("attention", "bfloat16")
    )


def test_auto_picks_cudnn_and_model_matches_xla():
    cfg = ModelConfig(compute_dtype="bfloat16", d_model=256, n_heads=4, n_kv_heads=2, d_ff=768)
    assert resolve_attention_impl("auto", jnp.dtype(jnp.bfloat16), 64) == "cudnn"
    auto = Transformer(cfg, rngs=nnx.Rngs(0))
    xla = Transformer(dataclasses.replace(cfg, attention_impl="xla"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 128), 0, cfg.vocab_size)
    forward = nnx.jit(lambda m, t: m(t))
    got, want = forward(auto, tokens), forward(xla, tokens)
    np.testing.assert_allclose(got, want, **tol("model_attention", "bfloat16"))
    grad = nnx.jit(nnx.grad(lambda m: m(tokens).mean()))
    jax.block_until_ready(grad(auto))  # the cuDNN backward compiles and runs
