"""The distillation objective: on-policy sampling with the KV cache, masks, frozen teacher."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from compactlm.models.transformer import ModelConfig, Transformer
from compactlm.train.distill import DistillConfig, DistillLoss
from compactlm.train.distill_step import make_objective, on_policy_masks, sample_continuation
from tests.tolerances import tol

# init_std 0.3 so an untrained model's greedy continuation is not one repeated token.
STUDENT = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3
)
TEACHER = ModelConfig(
    vocab_size=64, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96, init_std=0.3
)


def tokens(B=3, S=12, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, S), 0, 64, jnp.int32)


def jitted(model):
    """model(tokens) as one compiled function (eager NNX calls dispatch op by op: slow)."""
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: fn(state, x)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sample(graphdef, state, data, prompt_len, rng, temperature):
    return sample_continuation(nnx.merge(graphdef, state), data, prompt_len, rng, temperature)


def sample(model, data, prompt_len, rng, temperature=1.0):
    graphdef, state = nnx.split(model)
    return _sample(graphdef, state, data, prompt_len, rng, jnp.float32(temperature))


def run_objective(cfg, graphdef, student, data, rng, state):
    sgraph, sstate = nnx.split(student)
    fn = jax.jit(lambda s, t, r, a: make_objective(cfg, graphdef)(nnx.merge(sgraph, s), t, r, a))
    return fn(sstate, data, rng, state)


def test_greedy_continuation_equals_uncached_argmax_decoding():
    model = Transformer(STUDENT, rngs=nnx.Rngs(0))
    data = tokens()
    got = np.asarray(sample(model, data, 4, jax.random.key(0), temperature=0.0))
    # reference: recompute the whole sequence without a cache for every new token (causal, so
    # the logits at pos − 1 see only the tokens decided so far)
    forward = jitted(model)
    want = np.asarray(data).copy()
    for pos in range(4, data.shape[1]):
        want[:, pos] = np.asarray(forward(jnp.asarray(want)))[:, pos - 1].argmax(-1)
    np.testing.assert_array_equal(got, want)


def test_sampled_continuation_keeps_prompt_and_is_a_function_of_the_key():
    model = Transformer(STUDENT, rngs=nnx.Rngs(0))
    data = tokens()
    a = np.asarray(sample(model, data, 5, jax.random.key(1)))
    b = np.asarray(sample(model, data, 5, jax.random.key(1)))
    c = np.asarray(sample(model, data, 5, jax.random.key(2)))
    np.testing.assert_array_equal(a[:, :5], np.asarray(data)[:, :5])
    np.testing.assert_array_equal(a, b)
    assert (a[:, 5:] != c[:, 5:]).any()


def test_on_policy_masks():
    div, ce = on_policy_masks(seq_len=6, prompt_len=2)
    # positions 0..4 predict tokens 1..5; tokens 2..5 were sampled
    np.testing.assert_array_equal(div, [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ce, [1, 0, 0, 0, 0])


def _models():
    student = Transformer(STUDENT, rngs=nnx.Rngs(0))
    teacher = Transformer(TEACHER, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(teacher)
    return student, teacher, graphdef, state


def test_off_policy_objective_is_the_loss_on_both_models_logits():
    student, teacher, graphdef, state = _models()
    cfg = DistillConfig(loss="jsd", beta=0.3, temperature=1.5, alpha=0.6)
    data = tokens(S=10)
    loss, metrics = run_objective(cfg, graphdef, student, data, jax.random.key(0), state)
    want, want_m = DistillLoss(cfg)(
        jitted(student)(data[:, :-1]), jitted(teacher)(data[:, :-1]), data[:, 1:]
    )
    np.testing.assert_allclose(float(loss), float(want), **tol("model_f32"))
    assert float(metrics["distill/on_policy"]) == 0.0
    for k, v in want_m.items():
        np.testing.assert_allclose(float(metrics[k]), float(v), **tol("model_f32"))


def test_on_policy_objective_scores_the_students_samples():
    student, teacher, graphdef, state = _models()
    cfg = DistillConfig(
        loss="rkl", alpha=1.0, on_policy=1.0, on_policy_prompt=4, on_policy_temperature=0.0
    )
    data = tokens(S=10)
    loss, metrics = run_objective(cfg, graphdef, student, data, jax.random.key(0), state)
    assert float(metrics["distill/on_policy"]) == 1.0
    seq = sample(student, data, 4, jax.random.key(0), temperature=0.0)
    div_mask, ce_mask = on_policy_masks(10, 4)
    B = data.shape[0]
    want, _ = DistillLoss(cfg)(
        jitted(student)(seq[:, :-1]),
        jitted(teacher)(seq[:, :-1]),
        seq[:, 1:],
        jnp.broadcast_to(div_mask, (B, 9)),
        ce_mask_BT=jnp.broadcast_to(ce_mask, (B, 9)),
    )
    np.testing.assert_allclose(float(loss), float(want), **tol("model_f32"))

    # λ = ½: the coin is a function of the step's key only; both outcomes occur over keys
    half = DistillConfig(on_policy=0.5, on_policy_prompt=4)
    sgraph, sstate = nnx.split(student)
    coin = jax.jit(
        lambda r: make_objective(half, graphdef)(nnx.merge(sgraph, sstate), data, r, state)[1][
            "distill/on_policy"
        ]
    )
    flags = [float(coin(jax.random.key(k))) for k in range(12)]
    assert 0 < sum(flags) < 12
    assert float(coin(jax.random.key(3))) == flags[3]


def test_gradient_flows_to_the_student_only():
    student, _, graphdef, state = _models()
    objective = make_objective(DistillConfig(on_policy=1.0, on_policy_prompt=4), graphdef)
    sgraph, sstate = nnx.split(student)
    data = tokens(S=10)

    def f(sstate, tstate):
        return objective(nnx.merge(sgraph, sstate), data, jax.random.key(0), tstate)[0]

    gs, gt = jax.jit(jax.grad(f, argnums=(0, 1)))(sstate, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(gs))
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(gs))
    assert all(np.abs(np.asarray(x)).max() == 0 for x in jax.tree.leaves(gt))  # stop_gradient


def test_init_from_teacher_takes_every_other_block():
    import dataclasses

    import pytest

    from compactlm.train.distill_init import init_from_teacher

    t_cfg = dataclasses.replace(STUDENT, n_layers=4, scan_layers=False)
    teacher = Transformer(t_cfg, rngs=nnx.Rngs(1))
    _, t_params, _ = nnx.split(teacher, nnx.Param, ...)
    # same depth: the student IS the teacher (identical logits), whatever the two layouts
    same = dataclasses.replace(t_cfg, scan_layers=True)
    graphdef, params, rest = nnx.split(Transformer(same, rngs=nnx.Rngs(2)), nnx.Param, ...)
    clone = nnx.merge(graphdef, init_from_teacher(params, t_params, same, t_cfg), rest)
    data = tokens()
    np.testing.assert_array_equal(jitted(clone)(data), jitted(teacher)(data))
    # half depth: blocks 0 and 2 (DistilBERT), embedding and final norm copied
    half = dataclasses.replace(t_cfg, n_layers=2)
    _, params, _ = nnx.split(Transformer(half, rngs=nnx.Rngs(2)), nnx.Param, ...)
    new = init_from_teacher(params, t_params, half, t_cfg)
    for i, j in enumerate([0, 2]):
        np.testing.assert_array_equal(
            new["layers"][i]["mlp"]["down_proj"]["kernel"][...],
            t_params["layers"][j]["mlp"]["down_proj"]["kernel"][...],
        )
    np.testing.assert_array_equal(new["embedding"][...], t_params["embedding"][...])
    wide = dataclasses.replace(half, d_ff=128)
    _, params, _ = nnx.split(Transformer(wide, rngs=nnx.Rngs(2)), nnx.Param, ...)
    with pytest.raises(ValueError, match="d_ff 128 vs teacher 64"):
        init_from_teacher(params, t_params, wide, t_cfg)
