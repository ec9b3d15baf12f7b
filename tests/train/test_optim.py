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
from compactlm.train.optim import (
    OptimConfig,
    decay_mask,
    make_optimizer,
    make_schedule,
    muon_dimensions,
)


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


def _flat(tree):
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(tree)}


@pytest.mark.parametrize("scan", [True, False])
def test_muon_takes_block_kernels_and_leaves_embedding_and_norms_to_adamw(scan):
    cfg = make_config("nano", [f"model.scan_layers={str(scan).lower()}"])
    params = nnx.state(Transformer(cfg.model, rngs=nnx.Rngs(0)), nnx.Param)
    dims = _flat(muon_dimensions(params))
    for path, value in _flat(params).items():
        if path.endswith("kernel"):  # [L, in, out] when scanned: the layer axis is a batch axis
            assert tuple(dims[path]) == (value.ndim - 2, value.ndim - 1), path
        else:
            assert dims[path] is None and ("embedding" in path or "norm" in path), path


def test_muon_update_is_the_scaled_polar_factor_of_the_gradient():
    # Muon's first step from zero momentum orthogonalizes the (Nesterov) gradient: G = U S Vᵀ
    # becomes ≈ U Vᵀ, scaled to RMS muon_rms·lr. Newton-Schulz with Jordan's quintic does not
    # converge to exactly 1 (it trades accuracy for speed: singular values land in ~0.7-1.2),
    # so the check is on the singular vectors (from NumPy's SVD) and a band for the values.
    rng = np.random.default_rng(0)
    grad = rng.normal(size=(48, 96)).astype(np.float32) * np.linspace(0.5, 2, 96)
    model = Transformer(make_config("nano").model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    key = "layers/attn/qkv_proj/kernel"
    shape = _flat(params)[key].shape  # [L=4, 64, 128]: fill layer 0 with a smaller G via padding
    g = np.zeros(shape, np.float32)
    g[0, :48, :96] = grad
    cfg = OptimConfig(kind="muon", lr=1e-2, warmup_steps=0, grad_clip=0.0, weight_decay=0.0)
    tx = make_optimizer(cfg, total_steps=10)

    def fill(path, leaf):
        name = "/".join(str(getattr(p, "key", p)) for p in path)
        return leaf.replace(jnp.asarray(g) if name == key else jnp.zeros_like(leaf.get_value()))

    grads = jax.tree_util.tree_map_with_path(
        fill, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    u = -np.asarray(_flat(updates)[key][0], np.float64)
    assert np.abs(u[48:]).max() == 0 and np.abs(u[:, 96:]).max() == 0
    u = u[:48, :96]
    left, s, right_t = np.linalg.svd(grad.astype(np.float64), full_matrices=False)
    core = left.T @ u @ right_t.T  # diagonal iff u shares G's singular vectors
    off = core - np.diag(np.diag(core))
    scale = cfg.lr * cfg.muon_rms * np.sqrt(max(shape[1:]))  # optax's consistent-RMS scaling
    assert np.abs(off).max() < 1e-3 * scale
    assert np.all((np.diag(core) > 0.6 * scale) & (np.diag(core) < 1.25 * scale))


def test_muon_trains_nano_sharded(tmp_path):
    from compactlm.train.loop import Trainer

    steps = ["train.steps=4", "train.log_every=1", "train.checkpoint_every=0"]
    cfg = make_config(
        "nano", [*steps, "optim.kind=muon", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    )
    trainer = Trainer(cfg, tmp_path)
    trainer.restore_or_init()
    assert trainer.train()["status"] == "done"
    with pytest.raises(ValueError, match="undecayed"):
        OptimConfig(kind="muon", decay_embeddings=True)
