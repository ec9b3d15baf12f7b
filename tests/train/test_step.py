"""train/step.py: the jitted train step against a hand-applied gradient step, what trains vs
what stays frozen, the eval step against NumPy, and sharded initialisation against eager init."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from compactlm.models.config import AdapterConfig, ModelConfig
from compactlm.models.transformer import Transformer
from compactlm.train.loss import cross_entropy
from compactlm.train.mesh import MeshConfig, batch_sharding, make_mesh
from compactlm.train.step import abstract_state, build, init_state
from tests.tolerances import tol

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)


def _program(tx, cfg=CFG, mesh_cfg=None, devices=1, **kw):
    mesh = make_mesh(mesh_cfg or MeshConfig(), devices=jax.devices()[:devices])
    return build(cfg, tx, mesh, batch_sharding=batch_sharding(mesh), **kw)


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def _host(tree):
    return jax.tree.map(lambda x: np.array(x), nnx.to_pure_dict(tree))


def _log_softmax_np(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_sgd_step_is_params_minus_lr_times_the_gradient():
    lr = 0.5
    program = _program(optax.sgd(lr))
    state = init_state(program, CFG, seed=0)
    tokens = jax.random.randint(jax.random.key(1), (1, 3, 9), 0, 64)
    # Reference, outside build(): the model's gradient by nnx.grad, the loss by NumPy.
    model = program.model(state)
    loss = lambda m: cross_entropy(m(tokens[0, :, :-1]), tokens[0, :, 1:])[0]  # noqa: E731
    g = _host(nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param))
    before = _host(state.params)
    logp = _log_softmax_np(_forward(model, tokens[0, :, :-1]))
    targets = np.asarray(tokens[0, :, 1:])
    nll = -np.take_along_axis(logp, targets[..., None], -1).mean()

    new, metrics = program.train_step(state, tokens, None)

    after = _host(new.params)
    expected = jax.tree.map(lambda p, d: p - lr * d, before, g)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **tol("f32_reorder")), after, expected
    )
    norm = np.sqrt(sum(float(np.sum(np.square(x, dtype=np.float64))) for x in jax.tree.leaves(g)))
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, **tol("f32_reorder"))
    np.testing.assert_allclose(float(metrics["loss"]), nll, **tol("f32_reorder"))
    assert int(new.step) == 1


def test_with_adapters_only_lora_params_train_and_the_base_is_bit_identical():
    cfg = dataclasses.replace(CFG, adapter=AdapterConfig(kind="lora", rank=2, targets=("q", "v")))
    program = _program(optax.adam(1e-2), cfg, trainable=nnx.LoRAParam)
    state = init_state(program, cfg, seed=0)
    frozen0, params0 = _host(state.frozen), _host(state.params)
    assert any("lora" in str(k).lower() for k in nnx.to_flat_state(state.params))
    n_params = len(jax.tree.leaves(state.params))
    # Adam's moments cover exactly the trainable leaves (mu and nu), plus the step count.
    assert len(jax.tree.leaves(state.opt_state)) == 2 * n_params + 1
    tokens = jax.random.randint(jax.random.key(2), (1, 2, 9), 0, 64)
    for _ in range(2):
        state, _ = program.train_step(state, tokens, None)
    jax.tree.map(np.testing.assert_array_equal, _host(state.frozen), frozen0)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), _host(state.params), params0)
    assert all(jax.tree.leaves(changed))


def test_eval_step_sums_the_masked_nll_like_numpy():
    program = _program(optax.sgd(0.0))
    state = init_state(program, CFG, seed=4)
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (2, 9), 0, 64))
    mask = np.ones((2, 8), np.float32)
    mask[1, 5:] = 0.0  # a padded tail
    total, count = program.eval_step(state.params, state.frozen, tokens, mask)
    logp = _log_softmax_np(_forward(program.model(state), jnp.asarray(tokens[:, :-1])))
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(float(total), float((nll * mask).sum()), **tol("f32_reorder"))
    assert float(count) == 13.0


def test_init_state_is_sharded_and_matches_eager_init():
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    program = _program(optax.adam(1e-3), cfg, MeshConfig(fsdp=2, tensor=2), devices=8)
    state = init_state(program, cfg, seed=0)
    q = nnx.to_pure_dict(state.params)["layers"]["attn"]["qkv_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.sharding.device_set) == 8
    assert {s.data.shape for s in q.addressable_shards} == {(1, 16, q.shape[2] // 2)}
    ref = nnx.jit(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))()  # one device, no shardings
    # sharded vs unsharded compilation: XLA's fused erf_inv may differ in the last ulp.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **tol("f32_reorder")),
        _host(nnx.state(program.model(state))),
        _host(nnx.state(ref)),
    )
    # the checkpoint restore target has the same shapes, dtypes and shardings
    target = abstract_state(program, cfg, seed=0)
    same = jax.tree.map(
        lambda t, x: (t.shape, t.dtype, t.sharding) == (x.shape, x.dtype, x.sharding),
        target,
        state,
    )
    assert all(jax.tree.leaves(same))
