"""Feature distillation: the losses against NumPy, hidden states, pairs, objective, checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.models.transformer import ModelConfig, Transformer
from compactlm.train import checkpoint as ckpt
from compactlm.train.distill import DistillConfig, DistillLoss
from compactlm.train.distill_features import (
    FeatureStudent,
    feature_loss,
    feature_pairs,
    make_student_fn,
)
from compactlm.train.distill_step import make_objective
from tests.tolerances import tol

STUDENT = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
TEACHER = ModelConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96)


def numpy_feature_loss(u, v, kind, mask, proj=None):
    """From the definition, in float64: per pair and position, then masked mean, pair mean."""
    u, v, mask = np.float64(u), np.float64(v), np.float64(mask)
    per_pair = []
    for p in range(u.shape[0]):
        a = u[p] @ proj[p] if proj is not None else u[p]  # [B, T, Dt]
        b = v[p]
        if kind == "cosine":
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            per = 1.0 - cos
        else:
            per = ((a - b) ** 2).mean(-1)
        per_pair.append((per * mask).sum() / mask.sum())
    return float(np.mean(per_pair))


@pytest.mark.parametrize("kind", ["cosine", "l2"])
@pytest.mark.parametrize("widths", [(6, 8), (8, 8)])
def test_feature_loss_matches_numpy(kind, widths):
    ds, dt = widths
    rng = np.random.default_rng(0)
    u = rng.normal(size=(2, 3, 5, ds)).astype(np.float32)
    v = rng.normal(size=(2, 3, 5, dt)).astype(np.float32)
    proj = rng.normal(size=(2, ds, dt)).astype(np.float32) if ds != dt else None
    mask = (rng.random((3, 5)) > 0.3).astype(np.float32)
    as_jax = None if proj is None else jnp.asarray(proj)
    got = feature_loss(jnp.asarray(u), jnp.asarray(v), kind, jnp.asarray(mask), as_jax)
    want = numpy_feature_loss(u, v, kind, mask, proj)
    np.testing.assert_allclose(float(got), want, **tol("f32_reorder"))
    # identical states: zero loss (cosine also for any positive rescaling)
    if proj is None:
        u_j = jnp.asarray(u)
        same = feature_loss(u_j, (3.0 if kind == "cosine" else 1.0) * u_j, kind, jnp.asarray(mask))
        np.testing.assert_allclose(float(same), 0.0, atol=1e-6)


def _jit_hidden(model, data):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, return_hidden=True))(state, data)


@pytest.mark.parametrize("scan", [False, True])
def test_hidden_states_are_the_residual_stream(scan):
    cfg = dataclasses.replace(TEACHER, scan_layers=scan)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    data = jax.random.randint(jax.random.key(1), (2, 7), 0, 64, jnp.int32)
    logits, hidden = _jit_hidden(model, data)
    assert hidden.shape == (cfg.n_layers + 1, 2, 7, cfg.d_model)
    graphdef, state = nnx.split(model)
    plain = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, data)
    np.testing.assert_array_equal(logits, plain)  # the normal forward pass is unchanged
    np.testing.assert_array_equal(hidden[0], np.asarray(model.embedding[...])[np.asarray(data)])
    # the last state is what the final norm and the (tied) head read
    head = jax.jit(lambda m, h: m.final_norm(h) @ m.embedding[...].T)
    np.testing.assert_allclose(head(model, hidden[-1]), logits, **tol("model_f32"))
    with pytest.raises(ValueError, match="uncached"):
        model(data, cache=model.init_cache(2, 8), return_hidden=True)


def test_feature_pairs_default_spacing_and_errors():
    assert feature_pairs("", 4, 8) == ((1, 2), (2, 4), (3, 6), (4, 8))
    assert feature_pairs("", 2, 2) == ((1, 1), (2, 2))
    assert feature_pairs(" 0:0, 2:4 ", 2, 4) == ((0, 0), (2, 4))
    with pytest.raises(ValueError, match=r"pair 3:1 is out of range: the student has hidden"):
        feature_pairs("3:1", 2, 4)
    with pytest.raises(ValueError, match="STUDENT:TEACHER"):
        feature_pairs("1-2", 2, 4)
    with pytest.raises(ValueError, match="valid: none, cosine, l2"):
        DistillConfig(features="mse")
    with pytest.raises(ValueError, match="needs distill.features"):
        DistillConfig(feature_layers="1:1")
    with pytest.raises(ValueError, match="feature_weight must be >= 0"):
        DistillConfig(features="l2", feature_weight=-1.0)


def _student(seed=0):
    model_fn = make_student_fn(STUDENT, TEACHER, n_pairs=2)
    return model_fn(STUDENT, rngs=nnx.Rngs(seed))


def test_objective_adds_the_weighted_feature_term_and_trains_the_projection():
    student, teacher = _student(), Transformer(TEACHER, rngs=nnx.Rngs(1))
    assert isinstance(student, FeatureStudent) and make_student_fn(STUDENT, STUDENT, 2) is None
    cfg = DistillConfig(features="cosine", feature_layers="1:3,2:1", feature_weight=0.7)
    pairs = feature_pairs(cfg.feature_layers, STUDENT.n_layers, TEACHER.n_layers)
    t_graphdef, t_state = nnx.split(teacher)
    s_graphdef, s_state = nnx.split(student)
    data = jax.random.randint(jax.random.key(2), (3, 9), 0, 64, jnp.int32)
    objective = make_objective(cfg, t_graphdef, pairs)

    def f(s_state, t_state):
        return objective(nnx.merge(s_graphdef, s_state), data, jax.random.key(0), t_state)

    (loss, metrics), (gs, gt) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        s_state, t_state
    )
    s_logits, s_hidden = _jit_hidden(student, data[:, :-1])
    t_logits, t_hidden = _jit_hidden(teacher, data[:, :-1])
    logit_loss, _ = DistillLoss(cfg)(s_logits, t_logits, data[:, 1:])
    proj = np.asarray(student.feature_proj[...])
    want_feat = numpy_feature_loss(
        np.asarray(s_hidden)[[1, 2]], np.asarray(t_hidden)[[3, 1]], "cosine", np.ones((3, 8)), proj
    )
    np.testing.assert_allclose(float(metrics["distill/feature"]), want_feat, **tol("model_f32"))
    np.testing.assert_allclose(float(loss), float(logit_loss) + 0.7 * want_feat, **tol("model_f32"))
    assert np.abs(np.asarray(gs["feature_proj"][...])).max() > 0  # the projection learns
    assert all(np.abs(np.asarray(x)).max() == 0 for x in jax.tree.leaves(gt))  # teacher frozen


def test_checkpoint_keeps_the_projection_apart_and_round_trips(tmp_path):
    import optax

    student = _student()
    _, params, frozen = nnx.split(student, nnx.Param, ...)
    tx = optax.adamw(1e-3)
    opt = tx.init(params)
    opt = tx.update(jax.tree.map(jnp.ones_like, params), opt, params)[1]  # non-zero moments
    from compactlm.train.step import TrainState

    state = TrainState(
        step=jnp.int32(3), params=params, frozen=frozen, opt_state=opt, rng=jnp.zeros(2, jnp.uint32)
    )
    plain, extra = ckpt.split_extra(state, "feature_proj")
    assert "feature_proj" not in plain.params and len(extra["opt"]) == 2  # Adam's mu and nu
    # the plain part is exactly a Transformer's TrainState
    t_params = nnx.split(Transformer(STUDENT, rngs=nnx.Rngs(0)), nnx.Param, ...)[1]
    assert jax.tree.structure(plain.params) == jax.tree.structure(t_params)
    manager = ckpt.make_manager(tmp_path)
    ckpt.save(manager, 3, state, {"step": 3}, {}, extra_key="feature_proj")
    assert (tmp_path / "checkpoints" / "3" / "extra").is_dir()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    back, _, _ = ckpt.restore(manager, abstract, 3, extra_key="feature_proj")
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    # a reader of the plain model restores the state item alone
    plain_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), plain)
    only, _, _ = ckpt.restore(manager, plain_abstract, 3)
    np.testing.assert_array_equal(only.params["embedding"][...], params["embedding"][...])
