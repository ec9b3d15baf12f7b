"""The pluggable objective of the train step: aux reaches it, the step key is (seed, step)-pure,
and gradient accumulation carries whatever metrics the objective emits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from compactlm.models.config import ModelConfig
from compactlm.train.loss import cross_entropy
from compactlm.train.mesh import MeshConfig, batch_sharding, make_mesh
from compactlm.train.step import build, init_state, step_rng

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)


def _program(objective, aux, grad_accum=1):
    mesh = make_mesh(MeshConfig(), devices=jax.devices()[:1])
    return build(
        CFG,
        optax.sgd(0.0),  # lr 0: the state is unchanged, so steps are comparable
        mesh,
        objective=objective,
        aux=aux,
        grad_accum=grad_accum,
        batch_sharding=batch_sharding(mesh),
    )


def test_objective_sees_aux_rng_and_metrics_accumulate():
    seen = {}

    def objective(model, tokens_BT1, rng, aux):
        logits = model(tokens_BT1[:, :-1])
        loss, metrics = cross_entropy(logits, tokens_BT1[:, 1:])
        draw = jax.random.uniform(rng)
        seen["rng_shape"] = rng.shape
        return loss + aux["bias"], dict(metrics, draw=draw, aux_bias=aux["bias"])

    aux = {"bias": jnp.float32(0.25)}
    tokens = jax.random.randint(jax.random.key(0), (2, 2, 9), 0, 64)
    program = _program(objective, aux, grad_accum=2)
    state = init_state(program, CFG, seed=3)
    key = step_rng(state.rng, state.step)  # before the step: its input state is donated
    new_state, metrics = program.train_step(state, tokens, aux)
    # aux reached the objective, and the extra metrics survived the accumulation carry
    np.testing.assert_allclose(float(metrics["aux_bias"]), 0.25)
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics["nll"]) + 0.25, rtol=1e-6)
    # the two micro-batches drew with fold_in(step key, i): the mean of those two draws
    expected = np.mean([float(jax.random.uniform(jax.random.fold_in(key, i))) for i in range(2)])
    np.testing.assert_allclose(float(metrics["draw"]), expected, rtol=1e-6)
    # step 1's key differs from step 0's and depends only on (rng, step)
    _, metrics1 = program.train_step(new_state, tokens, aux)
    assert float(metrics1["draw"]) != float(metrics["draw"])


def test_default_objective_is_next_token_cross_entropy():
    program = _program(None, None)
    state = init_state(program, CFG, seed=0)
    tokens = jax.random.randint(jax.random.key(1), (1, 2, 9), 0, 64)
    model = nnx.merge(program.graphdef, state.params, state.frozen)
    expected, _ = cross_entropy(model(tokens[0, :, :-1]), tokens[0, :, 1:])
    expected = float(expected)  # before the step donates the state
    _, metrics = program.train_step(state, tokens, None)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-6)
