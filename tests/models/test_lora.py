"""Adapters against formulas computed here: unfused LoRA on a fused projection, DoRA, merge,
PiSSA, trainable counts, LoRA+, frozen packed bases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from compactlm.models.config import AdapterConfig, ModelConfig
from compactlm.models.linear import make_linear, qkv_layout, single
from compactlm.models.lora import LoRAB
from compactlm.models.transformer import Transformer
from compactlm.train.optim import OptimConfig, make_optimizer
from tests.tolerances import tol

D, N, K, H = 16, 4, 2, 4  # G = 2 query heads per kv head
SHAPE = dict(vocab_size=64, d_model=D, n_layers=2, n_heads=N, n_kv_heads=K, d_ff=32)


def _cfg(**adapter) -> ModelConfig:
    return ModelConfig(**SHAPE, adapter=AdapterConfig(**adapter))


def _qkv(cfg: ModelConfig):
    return make_linear(
        qkv_layout(N, K, H), D, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=(None, None), path="l"
    )


def _randomize(adapter, seed=1):
    """Non-zero B (and A) so the adapter actually changes the output."""
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    for p in adapter.parts:
        adapter.a[p][...] = jax.random.normal(next(keys), adapter.a[p][...].shape)
        adapter.b[p][...] = jax.random.normal(next(keys), adapter.b[p][...].shape)


def _unfused_columns():
    """Column indices of q, k, v in the fused kernel, from the layout's definition:
    column (k, j, h) = (k·(G+2) + j)·H + h; query head n = k·G + j."""
    G = N // K
    q = [(k * (G + 2) + j) * H + h for k in range(K) for j in range(G) for h in range(H)]
    kk = [(k * (G + 2) + G) * H + h for k in range(K) for h in range(H)]
    v = [(k * (G + 2) + G + 1) * H + h for k in range(K) for h in range(H)]
    return np.array(q), np.array(kk), np.array(v)


def test_lora_on_q_is_an_unfused_q_lora_and_leaves_k_v_untouched():
    cfg = _cfg(kind="lora", rank=2, alpha=3.0, targets=("q",))
    lin = _qkv(cfg)
    assert lin.adapter.parts == ("q",)
    _randomize(lin.adapter)
    x = np.random.default_rng(0).normal(size=(3, D)).astype(np.float32)
    w = np.asarray(lin.kernel[...])
    a, b = np.asarray(lin.adapter.a["q"][...]), np.asarray(lin.adapter.b["q"][...])
    qi, ki, vi = _unfused_columns()
    y = np.asarray(lin(jnp.asarray(x)))
    s = 3.0 / 2
    np.testing.assert_allclose(y[:, qi], x @ w[:, qi] + s * (x @ a) @ b, **tol("f32_reorder"))
    np.testing.assert_allclose(y[:, ki], x @ w[:, ki], **tol("f32_reorder"))
    np.testing.assert_allclose(y[:, vi], x @ w[:, vi], **tol("f32_reorder"))


def test_dora_matches_its_definition():
    cfg = _cfg(kind="dora", rank=2, alpha=2.0, targets=("o",))
    lin = make_linear(
        single("o", 8), D, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=(None, None), path="l"
    )
    w = np.asarray(lin.kernel[...], np.float64)
    np.testing.assert_allclose(lin.adapter.magnitude["o"][...], np.linalg.norm(w, axis=0), 1e-6)
    _randomize(lin.adapter)
    lin.adapter.magnitude["o"][...] = jnp.linspace(0.5, 2.0, 8)
    a, b = (np.asarray(lin.adapter.a["o"][...]), np.asarray(lin.adapter.b["o"][...]))
    m = np.linspace(0.5, 2.0, 8)
    w_new = w + 1.0 * a @ b
    w_dora = m * w_new / np.linalg.norm(w_new, axis=0)
    x = np.random.default_rng(1).normal(size=(4, D))
    np.testing.assert_allclose(lin(jnp.asarray(x, jnp.float32)), x @ w_dora, **tol("f32_reorder"))
    np.testing.assert_allclose(lin.adapter.merged_weight(lin), w_dora, **tol("f32_reorder"))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merged_weight_gives_the_adapter_output(kind):
    cfg = _cfg(kind=kind, rank=3, targets=("q", "v"), rslora=True)
    lin = _qkv(cfg)
    _randomize(lin.adapter)
    x = jax.random.normal(jax.random.key(2), (5, D))
    merged = lin.adapter.merged_weight(lin)
    np.testing.assert_allclose(lin(x), x @ merged, **tol("f32_reorder"))
    if kind == "lora":
        back = lin.adapter.unmerged_weight(merged, lin.layout)
        np.testing.assert_allclose(back, lin.kernel[...], **tol("f32_reorder"))


def test_pissa_starts_at_the_base_function_with_the_principal_part_in_the_adapter():
    base = make_linear(
        single("o", 12), D, cfg=_cfg(), rngs=nnx.Rngs(0), kernel_axes=(None, None), path="l"
    )
    w = np.asarray(base.kernel[...], np.float64)
    cfg = _cfg(kind="lora", rank=3, alpha=6.0, targets=("o",), init="pissa")
    lin = make_linear(
        single("o", 12), D, cfg=cfg, rngs=nnx.Rngs(0), kernel_axes=(None, None), path="l"
    )
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    principal = (u[:, :3] * s[:3]) @ vt[:3]
    np.testing.assert_allclose(lin.adapter.delta_weight("o"), principal, atol=1e-5)
    np.testing.assert_allclose(lin.kernel[...], w - principal, atol=1e-5)  # frozen residual
    x = jax.random.normal(jax.random.key(3), (4, D))
    np.testing.assert_allclose(lin(x), base(x), **tol("f32_reorder"))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_trainable_count_is_the_formula(kind):
    cfg = _cfg(kind=kind, rank=4, targets=("all-linear",))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    n = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    F, L = SHAPE["d_ff"], SHAPE["n_layers"]
    shapes = [(D, N * H), (D, K * H), (D, K * H), (N * H, D), (D, F), (D, F), (F, D)]
    extra = sum(o for _, o in shapes) if kind == "dora" else 0
    assert n == L * (sum(4 * (i + o) for i, o in shapes) + extra)


def test_bad_adapter_configs_name_the_problem():
    with pytest.raises(ValueError, match="valid targets: q, k, v, o, gate, up, down, lm_head"):
        AdapterConfig(kind="lora", targets=("query",))
    with pytest.raises(ValueError, match="rank=9 is outside 1..min"):
        _qkv(_cfg(kind="lora", rank=9, targets=("k",)))  # k is 16 → 8 columns
    with pytest.raises(ValueError, match="scan_layers=false"):
        Transformer(
            ModelConfig(**SHAPE, adapter=AdapterConfig(kind="lora", target_regex=r"layers\.0\.")),
            rngs=nnx.Rngs(0),
        )


def test_target_regex_selects_layers_when_unrolled():
    cfg = ModelConfig(
        **SHAPE, scan_layers=False, adapter=AdapterConfig(kind="lora", target_regex=r"1\.mlp\.up$")
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    assert model.layers[0].mlp.gate_up_proj.adapter is None
    assert model.layers[1].mlp.gate_up_proj.adapter.parts == ("up",)


def test_lora_plus_scales_only_b_updates():
    cfg = _cfg(kind="lora", rank=2, targets=("q",), lora_plus_ratio=16.0)
    lin = _qkv(cfg)
    params = nnx.state(lin, nnx.LoRAParam)
    grads = jax.tree.map(jnp.ones_like, params)
    plain = make_optimizer(OptimConfig(grad_clip=0), 10, adapter=_cfg(kind="lora").adapter)
    plus = make_optimizer(OptimConfig(grad_clip=0), 10, adapter=cfg.adapter)
    u0, _ = plain.update(grads, plain.init(params), params)
    u1, _ = plus.update(grads, plus.init(params), params)
    for v0, v1 in zip(
        jax.tree.leaves(u0, is_leaf=lambda x: isinstance(x, nnx.Variable)),
        jax.tree.leaves(u1, is_leaf=lambda x: isinstance(x, nnx.Variable)),
        strict=True,
    ):
        ratio = 16.0 if isinstance(v1, LoRAB) else 1.0
        np.testing.assert_allclose(v1.get_value(), ratio * v0.get_value(), rtol=1e-6)


@pytest.mark.parametrize("fmt", ["nf4", "int4"])  # fp4 shares nf4's code-book path
def test_qlora_trains_adapters_and_keeps_the_packed_base_bit_identical(fmt):
    cfg = ModelConfig(
        **{**SHAPE, "d_model": 32, "d_ff": 64},
        weight_format=fmt,
        quant_group_size=32,
        adapter=AdapterConfig(kind="lora", rank=2, targets=("all-linear",)),
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, frozen = nnx.split(model, nnx.LoRAParam, ...)
    before = [np.asarray(x).copy() for x in jax.tree.leaves(frozen)]
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 64)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    def loss(p):
        logits = nnx.merge(graphdef, p, frozen)(tokens[:, :-1])
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    for _ in range(2):
        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, upd)
    assert all(
        np.array_equal(a, np.asarray(b))
        for a, b in zip(before, jax.tree.leaves(frozen), strict=True)
    )
    assert any(
        np.abs(np.asarray(x)).sum() > 0
        for p, x in nnx.to_flat_state(params)
        if "b" in [str(k) for k in p]
    )
    lin = nnx.merge(graphdef, params, frozen).layers.attn.qkv_proj
    assert lin.qweight[...].dtype == jnp.int32  # packed codes, never a dense kernel
    assert not hasattr(lin, "kernel")


def test_targets_take_transformers_module_names():
    """PEFT users write target_modules=["q_proj", "v_proj"]: the same projections as q, v."""
    peft = AdapterConfig(kind="lora", targets=("q_proj", "v_proj", "down_proj"))
    assert peft.target_names() == ("q", "v", "down")
    assert peft.targets_path("layers.2.attn.q") and not peft.targets_path("layers.2.attn.k")
    with pytest.raises(ValueError, match="unknown adapter target 'qkv_proj'"):
        AdapterConfig(kind="lora", targets=("qkv_proj",))
