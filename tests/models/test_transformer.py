"""Transformer tests: config validation, scan == loop, cache == recompute, remat, sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from compactlm.models.transformer import ModelConfig, Transformer
from tests.tolerances import tol

SMALL = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.2
)


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def _tokens(B=2, T=8, V=64, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, V)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
        (dict(head_dim=7), "must be even"),
        (dict(remat="full"), "remat=.*valid: none, block, dots"),
        (dict(compute_dtype="float16"), "valid: float32, bfloat16"),
        (dict(n_layers=0), "n_layers must be >= 1"),
        (dict(init_std=0.0), "must be > 0"),
        # 2:4 metadata words hold 32 rows of K; int4 scales, blocks of quant_group_size rows.
        (dict(weight_format="sparse24", d_ff=80), "d_ff=80 is not divisible by 32"),
        (dict(weight_format="int4", quant_group_size=32, d_ff=80), "=32, but d_ff=80 is not"),
        (dict(weight_format="sparse24_int4", quant_group_size=0, d_ff=80), "d_ff=80 is not div"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(SMALL, **overrides)


def test_bf16_2of4_needs_no_group_size():
    # sparse24 keeps bf16 values: a width the int4 group size does not divide is fine (the
    # check used to apply quant_group_size to it too).
    cfg = dataclasses.replace(SMALL, weight_format="sparse24", d_ff=96, quant_group_size=64)
    assert cfg.d_ff == 96


def test_config_is_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.d_model = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        ModelConfig(64)  # type: ignore[misc]
    assert ModelConfig(d_model=96, n_heads=3, n_kv_heads=1).resolved_head_dim == 32


def test_forward_shapes_and_dtypes():
    for cfg in (SMALL, dataclasses.replace(SMALL, compute_dtype="bfloat16", tie_embeddings=False)):
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        logits = _forward(model, _tokens())
        assert logits.shape == (2, 8, 64) and logits.dtype == jnp.float32
        assert np.isfinite(np.asarray(logits)).all()


def _loop_model_from_scan(scan_model: Transformer) -> Transformer:
    """An unscanned model carrying the scanned model's weights (layer i = slice i)."""
    loop_model = Transformer(
        dataclasses.replace(scan_model.cfg, scan_layers=False), rngs=nnx.Rngs(1)
    )
    stacked = nnx.state(scan_model.layers)
    for i, layer in enumerate(loop_model.layers):
        nnx.update(layer, jax.tree.map(lambda a, i=i: a[i], stacked))
    loop_model.embedding[...] = scan_model.embedding[...]
    nnx.update(loop_model.final_norm, nnx.state(scan_model.final_norm))
    return loop_model


def test_scan_layers_equals_loop():
    scan_model = Transformer(SMALL, rngs=nnx.Rngs(0))
    loop_model = _loop_model_from_scan(scan_model)
    tokens = _tokens()
    np.testing.assert_allclose(
        _forward(loop_model, tokens), _forward(scan_model, tokens), **tol("model_f32")
    )


def test_remat_same_loss_and_grads():
    tokens = _tokens()

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(tokens))[..., 0])

    grad = nnx.jit(nnx.grad(loss))
    want = grad(Transformer(SMALL, rngs=nnx.Rngs(0)))
    for remat in ("block", "dots"):
        got = grad(Transformer(dataclasses.replace(SMALL, remat=remat), rngs=nnx.Rngs(0)))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, **tol("model_f32"))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_prefill_and_decode_match_full_forward(scan_layers):
    model = Transformer(dataclasses.replace(SMALL, scan_layers=scan_layers), rngs=nnx.Rngs(0))
    tokens = _tokens(T=10)
    full = _forward(model, tokens)
    step = nnx.jit(lambda m, t, c: m(t, cache=c))
    logits, cache = step(model, tokens[:, :6], model.init_cache(2, 16))  # prefill 6
    np.testing.assert_allclose(logits, full[:, :6], **tol("model_f32"))
    for t in range(6, 10):  # one jitted step per token, same shapes every time
        logits, cache = step(model, tokens[:, t : t + 1], cache)
        np.testing.assert_allclose(logits[:, 0], full[:, t], **tol("model_f32"))
    assert int(cache.index) == 10


def test_partition_specs():
    specs = nnx.get_partition_spec(nnx.state(Transformer(SMALL, rngs=nnx.Rngs(0))))
    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(specs)}
    assert flat["embedding"] == P("tensor", "fsdp")
    assert flat["final_norm/scale"] == P(None)
    # Stacked layers: the leading L axis is unsharded.
    assert flat["layers/attn/o_proj/kernel"] == P(None, "tensor", "fsdp")
    assert flat["layers/attn/qkv_proj/kernel"] == P(None, "fsdp", "tensor")
    assert flat["layers/mlp/gate_up_proj/kernel"] == P(None, "fsdp", None)  # see MLP
    assert flat["layers/mlp/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert flat["layers/attn_norm/scale"] == P(None, None)
