"""Layer tests against references computed here: RMSNorm, RoPE, GQA, causality, factory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.models.dense import Linear
from compactlm.models.layers import MLP, Attention, Context, RMSNorm, apply_rope, rope_sin_cos
from compactlm.models.linear import make_linear, single
from compactlm.models.transformer import Block, ModelConfig
from tests.tolerances import tol

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=64)


def test_rmsnorm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) * 3
    norm = RMSNorm(16, eps=1e-5, param_dtype=jnp.float32, compute_dtype=jnp.float32)
    norm.scale[...] = jnp.linspace(0.5, 1.5, 16)
    want = x / np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-5)
    want = want * np.linspace(0.5, 1.5, 16)
    np.testing.assert_allclose(norm(jnp.asarray(x)), want, **tol("f32_reorder"))


def test_rope_matches_complex_rotation():
    B, T, N, H, theta = 2, 7, 3, 8, 10_000.0
    x = np.random.default_rng(1).normal(size=(B, T, N, H)).astype(np.float32)
    pos = np.array([np.arange(T), np.arange(T) * 5 + 3])  # arbitrary positions per row
    sin, cos = rope_sin_cos(jnp.asarray(pos), H, theta)
    got = np.asarray(apply_rope(jnp.asarray(x), sin, cos))
    # Rotate-half layout: pair j is the complex number x[j] + i·x[j + H/2].
    z = x[..., : H // 2].astype(np.float64) + 1j * x[..., H // 2 :]
    freq = theta ** (-np.arange(0, H, 2) / H)
    z = z * np.exp(1j * pos[:, :, None, None] * freq)
    want = np.concatenate([z.real, z.imag], axis=-1)
    np.testing.assert_allclose(got, want, **tol("rope_angle"))


def _attention_reference(x, attn, pos):
    """Plain multi-head attention in numpy (float64): repeat kv heads, causal softmax."""
    B, T, _ = x.shape
    N, K, H = attn.n_heads, attn.n_kv_heads, attn.head_dim
    G = N // K
    # The fused kernel's columns are (kv head k, slot j, h): j < G query head k·G + j, then k, v.
    w = np.asarray(attn.qkv_proj.kernel[...], np.float64).reshape(-1, K, G + 2, H)
    wq, wk, wv = (
        w[:, :, :G].reshape(-1, N * H),
        w[:, :, G].reshape(-1, K * H),
        w[:, :, G + 1].reshape(-1, K * H),
    )
    wo = np.asarray(attn.o_proj.kernel[...], np.float64)
    sin, cos = rope_sin_cos(jnp.asarray(pos), H, 10_000.0)
    q = np.asarray(apply_rope(jnp.asarray((x @ wq).reshape(B, T, N, H), jnp.float32), sin, cos))
    k = np.asarray(apply_rope(jnp.asarray((x @ wk).reshape(B, T, K, H), jnp.float32), sin, cos))
    v = (x @ wv).reshape(B, T, K, H)
    k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(H)
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", p, v).reshape(B, T, N * H)
    return out @ wo


@pytest.mark.parametrize("impl", ["xla", "blocked"])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_attention_matches_einsum_reference(n_kv_heads, impl):
    cfg = ModelConfig(**{**SMALL, "n_kv_heads": n_kv_heads}, attention_impl=impl, init_std=0.2)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    B, T = 2, 6
    x = np.random.default_rng(2).normal(size=(B, T, cfg.d_model)).astype(np.float32)
    pos = np.broadcast_to(np.arange(T), (B, T))
    sin, cos = rope_sin_cos(jnp.asarray(pos), cfg.resolved_head_dim, cfg.rope_theta)
    got, _ = attn(jnp.asarray(x), Context(sin, cos))
    np.testing.assert_allclose(got, _attention_reference(x, attn, pos), **tol("f32_reorder"))


def test_mlp_matches_swiglu_reference():
    cfg = ModelConfig(**SMALL, init_std=0.2)
    mlp = MLP(cfg, rngs=nnx.Rngs(0))
    x = np.random.default_rng(4).normal(size=(2, 5, cfg.d_model))
    # Fused kernel [D, 2F]: gate = columns [0, F), up = [F, 2F).
    w = np.asarray(mlp.gate_up_proj.kernel[...], np.float64)
    gate, up = x @ w[:, : cfg.d_ff], x @ w[:, cfg.d_ff :]
    want = (gate / (1 + np.exp(-gate)) * up) @ np.asarray(mlp.down_proj.kernel[...], np.float64)
    np.testing.assert_allclose(mlp(jnp.asarray(x, jnp.float32)), want, **tol("f32_reorder"))


def test_block_is_causal():
    """d out[t] / d x[s] is exactly zero for s > t (and nonzero for s <= t)."""
    cfg = ModelConfig(**SMALL, init_std=0.2)
    block = Block(cfg, rngs=nnx.Rngs(0))
    B, T = 1, 6
    x = jax.random.normal(jax.random.key(3), (B, T, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    sin, cos = rope_sin_cos(pos, cfg.resolved_head_dim, cfg.rope_theta)
    # jac[b, t, b', s, d] = d (sum_d out[b, t, d]) / d x[b', s, d], one jitted jacrev.
    jac = jax.jit(jax.jacrev(lambda x: block(x, Context(sin, cos))[0].sum(-1)))(x)
    dep_TS = np.abs(np.asarray(jac[0, :, 0])).sum(-1)
    assert np.all(dep_TS[np.triu_indices(T, k=1)] == 0.0), dep_TS
    assert np.all(dep_TS[np.tril_indices(T)] > 0.0), dep_TS


def test_make_linear_dense_orientation():
    cfg = ModelConfig(**SMALL)
    lin = make_linear(
        single("o", 3), 8, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=("fsdp", "tensor"), path=""
    )
    assert isinstance(lin, Linear) and lin.kernel[...].shape == (8, 3)
    x = jnp.ones((2, 8))
    np.testing.assert_allclose(lin(x), x @ lin.kernel[...], **tol("f32_reorder"))
    assert nnx.get_partition_spec(nnx.state(lin))["kernel"].get_value() == jax.P("fsdp", "tensor")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_linear_custom_vjp_grads_match_plain_einsum(dtype):
    """dense_matmul's hand-written backward == jax.grad of the plain autodiffed einsum."""
    cfg = ModelConfig(**SMALL, compute_dtype=dtype)
    lin = make_linear(
        single("o", 24), 16, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=(None, None), path=""
    )
    w = lin.kernel[...]
    x = jax.random.normal(jax.random.key(1), (3, 5, 16))
    probe = jax.random.normal(jax.random.key(2), (3, 5, 24))

    def plain(x, w):
        c = jnp.dtype(dtype)
        y = jnp.einsum(
            "...i,io->...o", x.astype(c), w.astype(c), preferred_element_type=jnp.float32
        )
        return jnp.sum(jnp.tanh(y.astype(c).astype(jnp.float32)) * probe)

    graphdef, state = nnx.split(lin)

    def ours(x, state):
        return jnp.sum(jnp.tanh(nnx.merge(graphdef, state)(x).astype(jnp.float32)) * probe)

    want = jax.grad(plain, argnums=(0, 1))(x, w)
    gx, gstate = jax.grad(ours, argnums=(0, 1))(x, state)
    got = (gx, gstate["kernel"].get_value())
    name = "f32_reorder" if dtype == "float32" else "attention"
    for g, e in zip(got, want, strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(
            np.asarray(g, np.float32), np.asarray(e, np.float32), **tol(name, dtype)
        )


def test_make_linear_unknown_format_lists_valid():
    cfg = ModelConfig(**SMALL)
    object.__setattr__(cfg, "weight_format", "int3")  # bypass __post_init__ to reach the factory
    with pytest.raises(ValueError, match="valid formats: dense"):
        make_linear(single("o", 3), 8, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=(None, None), path="")
    with pytest.raises(ValueError, match="dense"):
        dataclasses.replace(ModelConfig(**SMALL), weight_format="int3")
