"""compress/recover.py: the masked recovery objectives (fine-tuning, distillation from dense)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.compress import calibrate as C
from compactlm.compress import recover as R
from compactlm.config import ConfigError, apply_overrides
from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer

CFG = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=32)


def _masks(model, rng):
    """Random 50 % keep masks [L, K, N] per site, drawn independently of the model."""
    masks = {}
    for site in C.SITES:
        sub, attr = C.SITES[site]
        k, n = getattr(getattr(C.get_block(model, 0), sub), attr).kernel[...].shape
        masks[site] = jnp.asarray(rng.random((model.cfg.n_layers, k, n)) < 0.5, jnp.float32)
    return masks


def _grads(objective, model, tokens, aux):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, aux):
        return objective(nnx.merge(graphdef, params, rest), tokens, jax.random.key(0), aux)[0]

    return jax.jit(jax.value_and_grad(loss))(params, rest, aux)[::-1]


@pytest.mark.parametrize("mode", R.RECOVER_MODES)
def test_pruned_weights_get_exactly_zero_gradient(mode):
    model = Transformer(ModelConfig(**CFG, scan_layers=True), rngs=nnx.Rngs(0))
    teacher = Transformer(ModelConfig(**CFG, scan_layers=True), rngs=nnx.Rngs(1))
    masks = _masks(model, np.random.default_rng(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, 17)), jnp.int32)
    if mode == "distill":
        t_graphdef, t_state = nnx.split(teacher)
        objective = R.masked_distill_objective(R.RecoverConfig().distill, t_graphdef)
        aux = (masks, t_state)
    else:
        objective, aux = R.masked_objective(), masks
    grads, loss = _grads(objective, model, tokens, aux)
    assert float(loss) > 0
    for site in C.SITES:
        sub, attr = C.SITES[site]
        g = np.asarray(grads["layers"][sub][attr]["kernel"][...])
        keep = np.asarray(masks[site]) > 0
        assert np.all(g[~keep] == 0.0) and np.any(g[keep] != 0.0)


def test_distillation_from_itself_with_a_full_mask_is_zero():
    # KL(p ‖ q) with q = p is 0 and so is its gradient: the objective compares student and
    # teacher logits (alpha 1: no hard-label term), nothing else.
    model = Transformer(ModelConfig(**CFG, scan_layers=False), rngs=nnx.Rngs(0))
    ones = {site: jnp.ones_like(m) for site, m in _masks(model, np.random.default_rng(0)).items()}
    t_graphdef, t_state = nnx.split(nnx.clone(model))
    objective = R.masked_distill_objective(R.RecoverConfig().distill, t_graphdef)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, 17)), jnp.int32)
    grads, loss = _grads(objective, model, tokens, (ones, t_state))
    assert abs(float(loss)) < 1e-6
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) < 1e-5


def test_feature_recovery_adds_the_layerwise_l2_of_the_hidden_states():
    # The objective with features=l2 minus the same objective without them is feature_weight x
    # the mean over blocks 1..L of the mean squared hidden-state difference, computed here
    # from the two models' hidden states in NumPy (full masks: the student is the model itself).
    model = Transformer(ModelConfig(**CFG, scan_layers=False), rngs=nnx.Rngs(0))
    teacher = Transformer(ModelConfig(**CFG, scan_layers=False), rngs=nnx.Rngs(1))
    ones = {site: jnp.ones_like(m) for site, m in _masks(model, np.random.default_rng(0)).items()}
    t_graphdef, t_state = nnx.split(teacher)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, 17)), jnp.int32)
    plain = apply_overrides(R.RecoverConfig(), ["mode=distill"]).distill
    feats = apply_overrides(plain, ["features=l2", "feature_weight=0.5"])

    def loss(cfg):
        objective = R.masked_distill_objective(cfg, t_graphdef, model.cfg.n_layers)
        return float(objective(nnx.clone(model), tokens, jax.random.key(0), (ones, t_state))[0])

    _, hs = model(tokens[:, :-1], return_hidden=True)
    _, ht = teacher(tokens[:, :-1], return_hidden=True)
    hs, ht = np.asarray(hs, np.float64)[1:], np.asarray(ht, np.float64)[1:]
    expected = 0.5 * np.mean((hs - ht) ** 2)
    assert expected > 0
    np.testing.assert_allclose(loss(feats) - loss(plain), expected, rtol=1e-4)


def test_recover_config_names_the_modes():
    with pytest.raises(ConfigError, match="choose one of: 'finetune' | 'distill'"):
        apply_overrides(R.RecoverConfig(), ["mode=kd"])
    cfg = apply_overrides(R.RecoverConfig(), ["mode=distill", "distill.loss=rkl"])
    assert cfg.distill.loss == "rkl" and cfg.distill.alpha == 1.0
