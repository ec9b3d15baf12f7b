"""Optimizer pieces against direct formulas: schedule shape, weight-decay mask, z-loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.config import make_config
from compactlm.models.transformer import Transformer
from compactlm.train.loss import cross_entropy
from compactlm.train.optim import OptimConfig, decay_mask, make_schedule


def test_warmup_cosine_schedule_matches_formula():
    cfg = OptimConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    total = 110
    sched = make_schedule(cfg, total)
    for step in (0, 5, 10, 35, 60, 109, 110):
        if step < 10:
            expected = 1e-3 * step / 10
        else:
            frac = (step - 10) / 100
            expected = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(sched(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_decay_mask_skips_embeddings_and_norms_unless_asked():
    model = Transformer(make_config("nano").model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    mask = {
        "/".join(map(str, p)): v for p, v in nnx.to_flat_state(decay_mask(OptimConfig(), params))
    }
    for path in flat:
        decays = bool(mask[path].get_value())
        if "embedding" in path or "norm" in path:
            assert not decays, path
        else:
            assert decays and flat[path].get_value().ndim >= 2, path
    both = OptimConfig(decay_embeddings=True, decay_norms=True)
    mask = decay_mask(both, params)
    assert all(bool(v) for v in jax.tree.leaves(mask))


def test_cross_entropy_and_z_loss_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 5))
    mask = (rng.random((2, 5)) > 0.3).astype(np.float32)
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    expected_nll = (nll * mask).sum() / mask.sum()
    expected_z = 1e-2 * (log_z**2 * mask).sum() / mask.sum()
    loss, metrics = cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), z_loss=1e-2
    )
    np.testing.assert_allclose(float(metrics["nll"]), expected_nll, rtol=1e-6)
    np.testing.assert_allclose(float(loss), expected_nll + expected_z, rtol=1e-6)
