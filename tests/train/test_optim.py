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


def _flat(tree):
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(tree)}


# What decays, spelled out: the kernels of the linears (matrices) always; the embedding and the
# norm scales only when asked; the adapters' factors (and DoRA's magnitudes) only with
# adapter.decay. Paths as nnx writes them; unscanned blocks add the layer index.
KERNELS = (
    "attn/qkv_proj/kernel",
    "attn/o_proj/kernel",
    "mlp/gate_up_proj/kernel",
    "mlp/down_proj/kernel",
)
NORMS = ("attn_norm/scale", "mlp_norm/scale")


def _blocks(names, scan=True):
    prefixes = ["layers"] if scan else [f"layers/{i}" for i in range(4)]  # nano: 4 layers
    return {f"{prefix}/{name}" for prefix in prefixes for name in names}


def _adapter(factors=("a", "b"), parts=("q", "v")):  # adapter.targets defaults to (q, v)
    return _blocks(f"attn/qkv_proj/adapter/{f}/{p}" for f in factors for p in parts)


def _params(overrides, trainable=nnx.Param):
    cfg = make_config("nano", overrides)
    return cfg, nnx.state(Transformer(cfg.model, rngs=nnx.Rngs(0)), trainable)


@pytest.mark.parametrize(
    "overrides, trainable, expected",
    [
        ([], nnx.Param, _blocks(KERNELS)),
        (["model.scan_layers=false"], nnx.Param, _blocks(KERNELS, scan=False)),
        (["model.tie_embeddings=false"], nnx.Param, _blocks(KERNELS) | {"lm_head/kernel"}),
        (["optim.decay_embeddings=true"], nnx.Param, _blocks(KERNELS) | {"embedding"}),
        (
            ["optim.decay_norms=true"],
            nnx.Param,
            _blocks(KERNELS) | _blocks(NORMS) | {"final_norm/scale"},
        ),
        (
            ["optim.decay_norms=true", "model.scan_layers=false"],  # [D] scales, not [L, D]
            nnx.Param,
            _blocks(KERNELS, scan=False) | _blocks(NORMS, scan=False) | {"final_norm/scale"},
        ),
        (["adapter.kind=lora"], nnx.Param, _blocks(KERNELS)),
        (["adapter.kind=lora", "adapter.decay=true"], nnx.Param, _blocks(KERNELS) | _adapter()),
        (["adapter.kind=dora"], nnx.LoRAParam, set()),
        (
            ["adapter.kind=dora", "adapter.decay=true"],
            nnx.LoRAParam,
            _adapter(("a", "b", "magnitude")),
        ),
    ],
)
def test_decayed_paths_of_nano(overrides, trainable, expected):
    cfg, params = _params(overrides, trainable)
    mask = _flat(decay_mask(cfg.optim, params, cfg.model.adapter))
    assert mask.keys() == _flat(params).keys()
    assert {path for path, flag in mask.items() if flag} == expected


@pytest.mark.parametrize(
    "overrides, matrices",
    [
        ([], {p: (1, 2) for p in _blocks(KERNELS)}),  # [L, in, out]: the layer axis is batched
        (["model.scan_layers=false"], {p: (0, 1) for p in _blocks(KERNELS, scan=False)}),
        (
            ["model.tie_embeddings=false"],
            {p: (1, 2) for p in _blocks(KERNELS)} | {"lm_head/kernel": (0, 1)},
        ),
        (["adapter.kind=lora"], {p: (1, 2) for p in _blocks(KERNELS) | _adapter()}),
        (  # DoRA's [out] magnitudes are vectors: AdamW's
            ["adapter.kind=dora", "model.scan_layers=false"],
            {p: (0, 1) for p in _blocks(KERNELS, scan=False)}
            | {p.replace("layers", f"layers/{i}", 1): (0, 1) for p in _adapter() for i in range(4)},
        ),
        (  # ... and so are they scanned, [L, out]: gains by kind, not matrices by rank
            ["adapter.kind=dora"],
            {p: (1, 2) for p in _blocks(KERNELS) | _adapter()},
        ),
    ],
)
def test_muon_takes_the_matrices_and_leaves_embedding_and_norms_to_adamw(overrides, matrices):
    _, params = _params(overrides)
    dims = _flat(muon_dimensions(params))
    assert dims.keys() == _flat(params).keys()
    assert {path: tuple(d) for path, d in dims.items() if d is not None} == matrices


def _renamed(params, names):
    """The same Variables under other module names (a refactor that renames modules), and the
    new path of each old one."""
    flat = nnx.to_flat_state(params)
    paths = {path: tuple(names.get(str(k), k) for k in path) for path, _ in flat}
    join = "/".join
    return nnx.from_flat_state([(paths[p], v) for p, v in flat]), {
        join(map(str, old)): join(map(str, new)) for old, new in paths.items()
    }


@pytest.mark.parametrize("optim", [[], ["optim.decay_embeddings=true", "optim.decay_norms=true"]])
def test_decay_and_muon_groups_do_not_depend_on_module_names(optim):
    # nanoGPT / HF spellings, and matrices whose names contain "norm" / "embed".
    names = {
        "embedding": "wte",
        "attn_norm": "ln_1",
        "mlp_norm": "ln_2",
        "final_norm": "ln_f",
        "qkv_proj": "embed_qkv",
        "down_proj": "denormalize",
    }
    cfg, params = _params(["adapter.kind=dora", "adapter.decay=true", *optim])
    renamed, new_path = _renamed(params, names)
    for group in (lambda p: decay_mask(cfg.optim, p, cfg.model.adapter), muon_dimensions):
        before, after = _flat(group(params)), _flat(group(renamed))
        assert {new_path[path]: value for path, value in before.items()} == after


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


@pytest.mark.parametrize("decay", [False, True])
def test_muon_decays_adapter_factors_only_with_adapter_decay(decay):
    """With zero gradients an optimizer step is the decoupled decay alone (Muon's update of a zero
    momentum is zero): it must touch exactly the leaves decay_mask marks, as AdamW's does."""
    import optax

    cfg, params = _params(
        ["optim.kind=muon", "adapter.kind=lora", "train.steps=10", f"adapter.decay={decay}"]
    )
    params = jax.tree.map(lambda v: v + 1.0, params)  # B starts at zero: give it something
    tx = make_optimizer(cfg.optim, cfg.train.steps, adapter=cfg.model.adapter)
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    for _ in range(3):  # past warm-up's zero learning rate at step 0
        updates, state = tx.update(zeros, state, params)
    before, after = _flat(params), _flat(optax.apply_updates(params, updates))
    moved = {p for p in before if not np.array_equal(before[p], after[p])}
    expected = _blocks(KERNELS) | (_adapter() if decay else set())
    assert moved == expected
