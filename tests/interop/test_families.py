"""Hugging Face families beyond Llama (issue 18): Qwen2 (q/k/v biases), Qwen3 (per-head q/k
RMSNorm), Llama 3.x RoPE scaling (llama3, linear), SmolLM3 (layers without RoPE).

The references here are written from the definitions (transformers' Qwen2Attention /
Qwen3Attention and `_compute_llama3_parameters`), in float64 NumPy, reading only HF-named tensors;
they share no code with compactlm's model. With the fixtures of scripts/make_hf_fixtures.py
(tests/fixtures/hf/<family>-*/, logits made by transformers) the import is also checked against
transformers itself.
"""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from compactlm.config import Config, from_json, to_dict
from compactlm.data.dataset import padded_vocab_size
from compactlm.interop import hf
from compactlm.interop.hf_config import InteropError, config_from_hf, family_of
from compactlm.interop.hf_tensors import from_hf_tensors, to_hf_tensors
from compactlm.models.config import BiasParam, ModelConfig
from compactlm.models.layers import rope_inv_freq
from compactlm.models.transformer import PADDING_LOGIT, Transformer
from compactlm.train.loop import run
from tests.commandline import cli
from tests.tolerances import tol

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"

# ---------------------------------------------------------------------------------------------
# NumPy references, from the definitions
# ---------------------------------------------------------------------------------------------


def _rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate_half(x):
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([-x2, x1], axis=-1)


def reference_inv_freq(H: int, theta: float, rope: dict | None) -> np.ndarray:
    """RoPE frequencies with the Llama 3.1 rule as Meta's reference code states it (per
    frequency, three cases), or linear position interpolation; float64."""
    inv_freq = 1.0 / theta ** (np.arange(0, H, 2) / H)
    kind = (rope or {}).get("rope_type", "default")
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind != "llama3":
        return inv_freq
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    out = []
    for f in inv_freq:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(f)
        elif wavelen > old / low:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return np.asarray(out)


def reference_logits(hf_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """logits [T, V] of {Llama,Qwen2,Qwen3,SmolLM3}ForCausalLM for one sequence: config.json +
    safetensors only. Qwen2: `x @ W.T + b` on q, k, v; Qwen3: RMSNorm over each head's H
    features of q and k, then RoPE; SmolLM3: RoPE only in the layers with no_rope_layers[i] = 1."""
    c = json.loads((hf_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(hf_dir / "model.safetensors").items()}
    D, N, K = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    H = c.get("head_dim") or D // N
    T, eps = tokens.shape[0], c["rms_norm_eps"]
    inv_freq = reference_inv_freq(H, c["rope_theta"], c.get("rope_scaling"))
    angle = np.arange(T)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angle)] * 2, axis=-1)  # [T, H]
    sin = np.concatenate([np.sin(angle)] * 2, axis=-1)
    causal = np.tril(np.ones((T, T), bool))
    x = w["model.embed_tokens.weight"][tokens]

    def proj(h, name, heads):
        y = h @ w[name + ".weight"].T
        if name + ".bias" in w:
            y = y + w[name + ".bias"]
        return y.reshape(T, heads, H)

    uses_rope = c.get("no_rope_layers") or [1] * c["num_hidden_layers"]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q, k = proj(h, p + "self_attn.q_proj", N), proj(h, p + "self_attn.k_proj", K)
        v = proj(h, p + "self_attn.v_proj", K)
        if p + "self_attn.q_norm.weight" in w:
            q = _rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k, v = (a.transpose(1, 0, 2) for a in (q, k, v))
        if uses_rope[i]:
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = np.repeat(k, N // K, axis=0), np.repeat(v, N // K, axis=0)
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(H), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(T, N * H)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


# ---------------------------------------------------------------------------------------------
# The math pieces, unit by unit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rope",
    [
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },  # Llama 3.1 8B
        {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },  # Llama 3.2 1B
        {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 2.0,
            "high_freq_factor": 8.0,
            "original_max_position_embeddings": 64,
        },  # small: every regime at H = 64
        {"rope_type": "linear", "factor": 4.0},
    ],
)
def test_rope_frequencies_match_the_scaling_rule(rope):
    H, theta = 128, 500_000.0
    hf_cfg = {"model_type": "llama", "rope_scaling": rope, **_shape()}
    m = config_from_hf(hf_cfg).model
    ours = np.asarray(rope_inv_freq(H, theta, dataclasses.replace(m, rope_theta=theta)))
    np.testing.assert_allclose(ours, reference_inv_freq(H, theta, rope), rtol=2e-6)
    if rope["rope_type"] == "llama3" and rope["original_max_position_embeddings"] == 64:
        H = 64
        ours = np.asarray(rope_inv_freq(H, 10_000.0, m))
        ref = reference_inv_freq(H, 10_000.0, rope)
        plain = reference_inv_freq(H, 10_000.0, None)
        assert np.any(ref == plain) and np.any(np.isclose(ref, plain / 4))  # kept, scaled ...
        assert np.any(~np.isclose(ref, plain) & ~np.isclose(ref, plain / 4))  # ... and blended
        np.testing.assert_allclose(ours, ref, rtol=2e-6)


def test_plain_rope_is_unchanged_by_the_scaling_field():
    ours = rope_inv_freq(64, 10_000.0, ModelConfig())
    assert np.array_equal(np.asarray(ours), np.asarray(rope_inv_freq(64, 10_000.0)))


def test_qk_norm_is_a_per_head_rms_norm_before_rope():
    """Attention with qk_norm against the definition: q, k = RMSNorm_H(x @ Wq), RMSNorm_H(x @ Wk)
    per head, then RoPE, then softmax attention (positions 0..T-1)."""
    from compactlm.models.layers import Attention, Context, rope_sin_cos

    cfg = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, head_dim=32, qk_norm=True)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    attn.q_norm.scale[...] = jnp.asarray(rng.normal(1, 0.3, 32), jnp.float32)
    attn.k_norm.scale[...] = jnp.asarray(rng.normal(1, 0.3, 32), jnp.float32)
    T = 6
    x = rng.normal(size=(1, T, 64)).astype(np.float32)
    pos = jnp.arange(T)[None]
    sin, cos = rope_sin_cos(pos, 32, cfg.rope_theta, cfg)
    ours, _ = attn(jnp.asarray(x), Context(sin, cos))

    parts = attn.qkv_proj.layout.split_columns(np.asarray(attn.qkv_proj.kernel[...], np.float64))
    x64 = x[0].astype(np.float64)
    qs, ks = np.asarray(attn.q_norm.scale[...], np.float64), np.asarray(attn.k_norm.scale[...])
    q = _rms_norm((x64 @ np.asarray(parts["q"])).reshape(T, 4, 32), qs, cfg.norm_eps)
    k = _rms_norm((x64 @ np.asarray(parts["k"])).reshape(T, 2, 32), ks, cfg.norm_eps)
    v = (x64 @ np.asarray(parts["v"])).reshape(T, 2, 32)
    angle = np.arange(T)[:, None] * reference_inv_freq(32, cfg.rope_theta, None)[None]
    c2, s2 = (np.concatenate([f(angle)] * 2, -1)[:, None] for f in (np.cos, np.sin))
    q, k = q * c2 + _rotate_half(q) * s2, k * c2 + _rotate_half(k) * s2
    k, v = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    s = np.einsum("tnh,snh->nts", q, k) / np.sqrt(32)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("nts,snh->tnh", p, v).reshape(T, 128)
    ref = o @ np.asarray(attn.o_proj.kernel[...], np.float64)
    np.testing.assert_allclose(np.asarray(ours[0]), ref, **tol("model_f32"))


@pytest.mark.parametrize("use_rope", [False, True])
def test_a_no_rope_layer_attends_unrotated(use_rope):
    """no_rope_layers[i] = 0 (SmolLM3's NoPE layers): softmax(q kᵀ / √H) v on the projections
    as they are; 1: RoPE first, as every layer of the other families. Cached decode too."""
    from compactlm.models.layers import Attention, Context, rope_sin_cos

    cfg = ModelConfig(d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, no_rope_layers=(1, 0))
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    T, H = 6, 16
    x = rng.normal(size=(1, T, 64)).astype(np.float32)
    sin, cos = rope_sin_cos(jnp.arange(T)[None], H, cfg.rope_theta, cfg)
    ours, _ = attn(jnp.asarray(x), Context(sin, cos), use_rope=jnp.asarray(use_rope))

    parts = attn.qkv_proj.layout.split_columns(np.asarray(attn.qkv_proj.kernel[...], np.float64))
    x64 = x[0].astype(np.float64)
    q, k, v = ((x64 @ np.asarray(parts[n])).reshape(T, -1, H) for n in ("q", "k", "v"))
    if use_rope:
        angle = np.arange(T)[:, None] * reference_inv_freq(H, cfg.rope_theta, None)[None]
        c2, s2 = (np.concatenate([f(angle)] * 2, -1)[:, None] for f in (np.cos, np.sin))
        q, k = q * c2 + _rotate_half(q) * s2, k * c2 + _rotate_half(k) * s2
    k, v = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    s = np.einsum("tnh,snh->nts", q, k) / np.sqrt(H)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("nts,snh->tnh", p, v).reshape(T, 64)
    ref = o @ np.asarray(attn.o_proj.kernel[...], np.float64)
    np.testing.assert_allclose(np.asarray(ours[0]), ref, **tol("model_f32"))
    # The KV cache path applies the same rule: prefill T-1, then one decode step.
    S = 8
    cache = (jnp.zeros((1, S, 2, H)), jnp.zeros((1, S, 2, H)))
    mask = jnp.arange(S)[None, None, :] <= jnp.arange(T)[None, :, None]
    flag = jnp.asarray(use_rope)
    y1, cache = attn(
        jnp.asarray(x[:, :-1]),
        Context(sin[:, :-1], cos[:, :-1], mask_BTS=mask[:, :-1]),
        cache,
        jnp.asarray(0),
        use_rope=flag,
    )
    y2, _ = attn(
        jnp.asarray(x[:, -1:]),
        Context(sin[:, -1:], cos[:, -1:], mask_BTS=mask[:, -1:]),
        cache,
        jnp.asarray(T - 1),
        use_rope=flag,
    )
    np.testing.assert_allclose(np.concatenate([y1[0], y2[0]]), ref, **tol("model_f32"))


def test_no_rope_layers_are_validated():
    assert ModelConfig(n_layers=2, no_rope_layers=(1, 1)).rope_flags() is None
    for bad in ((1, 0, 1), (1, 2)):
        with pytest.raises(ValueError, match="no_rope_layers"):
            ModelConfig(n_layers=2, no_rope_layers=bad)


def test_qkv_bias_columns_follow_the_fused_layout():
    """Bias column (k, j, h) of the fused [K·(G+2)·H] vector: q_proj.bias[(k·G + j)·H + h] for
    j < G, k_proj.bias[k·H + h] for j = G, v_proj.bias[k·H + h] for j = G + 1."""
    N, K, H = 6, 2, 4
    G = N // K
    cfg = ModelConfig(
        d_model=24,
        n_heads=N,
        n_kv_heads=K,
        head_dim=H,
        n_layers=1,
        scan_layers=False,
        qkv_bias=True,
    )
    template = nnx.to_pure_dict(
        nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    )
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
    tensors = to_hf_tensors(template, cfg)
    b = {
        p: np.arange(n, dtype=np.float32) + o
        for p, n, o in (("q", N * H, 1000), ("k", K * H, 2000), ("v", K * H, 3000))
    }
    for p in b:
        tensors[f"model.layers.0.self_attn.{p}_proj.bias"] = b[p]
    fused = from_hf_tensors(tensors, template, cfg)["layers"][0]["attn"]["qkv_bias"]
    expect = np.empty((K, G + 2, H), np.float32)
    for k in range(K):
        for j in range(G + 2):
            for h in range(H):
                src = b["q"][(k * G + j) * H + h] if j < G else b["kv"[j - G]][k * H + h]
                expect[k, j, h] = src
    np.testing.assert_array_equal(fused, expect.reshape(-1))
    back = to_hf_tensors(jax.tree.map(np.asarray, from_hf_tensors(tensors, template, cfg)), cfg)
    for p in b:
        np.testing.assert_array_equal(back[f"model.layers.0.self_attn.{p}_proj.bias"], b[p])


def test_biases_are_frozen_under_adapters_and_never_decayed():
    from compactlm.train.optim import OptimConfig, decay_mask

    cfg = ModelConfig(
        qkv_bias=True,
        adapter=dataclasses.replace(ModelConfig().adapter, kind="lora", targets=("q", "k", "v")),
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    trained = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.LoRAParam))
    assert trained and not any("qkv_bias" in jax.tree_util.keystr(p) for p, _ in trained)
    params = nnx.state(model, nnx.Param)
    assert isinstance(params["layers"]["attn"]["qkv_bias"], BiasParam)
    mask = decay_mask(OptimConfig(weight_decay=0.1), params)
    assert not mask["layers"]["attn"]["qkv_bias"].get_value()


# ---------------------------------------------------------------------------------------------
# config.json: both generations, old run dirs, refusals
# ---------------------------------------------------------------------------------------------


def _shape(**changes) -> dict:
    return {
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": True,
        **changes,
    }


LLAMA3_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize(
    "hf_cfg",
    [
        {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", **LLAMA3_ROPE}},  # 4.x
        {"model_type": "llama", "rope_scaling": {"type": "llama3", **LLAMA3_ROPE}},  # old key
        {
            "model_type": "llama",
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **LLAMA3_ROPE},
        },  # 5.x
    ],
)
def test_llama3_rope_reads_from_both_generations(hf_cfg):
    m = config_from_hf({**_shape(), **hf_cfg}).model
    assert (m.rope_scaling, m.rope_factor, m.rope_low_freq_factor) == ("llama3", 8.0, 1.0)
    assert (m.rope_high_freq_factor, m.rope_original_max_len) == (4.0, 8192)
    assert family_of(m).model_type == "llama"


def test_qwen_configs_read_their_families():
    qwen2 = {
        **_shape(),
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 21,
        "layer_types": ["full_attention"] * 2,
    }
    m = config_from_hf(qwen2).model
    assert (m.qkv_bias, m.qk_norm, m.rope_scaling) == (True, False, "none")
    assert family_of(m).model_type == "qwen2"
    qwen3 = {
        **_shape(),
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "head_dim": 32,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 28,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
    }
    m = config_from_hf(qwen3).model
    assert (m.qkv_bias, m.qk_norm, m.resolved_head_dim) == (False, True, 32)
    assert family_of(m).model_type == "qwen3"
    smollm3 = {
        **_shape(num_hidden_layers=4),
        "model_type": "smollm3",
        "architectures": ["SmolLM3ForCausalLM"],
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * 4,
        "no_rope_layer_interval": 4,
    }
    m = config_from_hf(smollm3).model  # no no_rope_layers: transformers' default from interval
    assert m.no_rope_layers == (1, 1, 1, 0) and family_of(m).model_type == "smollm3"
    m = config_from_hf({**smollm3, "no_rope_layers": [1] * 4}).model
    assert m.no_rope_layers == () and family_of(m).model_type == "llama"  # the same math


def test_an_old_run_config_without_the_new_keys_loads():
    d = to_dict(Config())
    for key in (
        "qkv_bias",
        "qk_norm",
        "rope_scaling",
        "rope_factor",
        "rope_low_freq_factor",
        "rope_high_freq_factor",
        "rope_original_max_len",
    ):
        del d["model"][key]
    cfg = from_json(json.dumps(d))
    assert cfg == Config() and cfg.model.rope_scaling == "none" and not cfg.model.qkv_bias


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            "rope_scaling.rope_type='yarn' is not supported",
        ),
        (
            {"model_type": "llama", "rope_parameters": {"rope_type": "longrope"}},
            "rope_parameters.rope_type='longrope' is not supported",
        ),
        (
            {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "rope_scaling.rope_type='dynamic' is not supported",
        ),
        (
            {"model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "needs rope_scaling.low_freq_factor",
        ),
        (
            {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096},
            "use_sliding_window=True is not supported",
        ),
        ({"model_type": "llama", "sliding_window": 4096}, "sliding_window=4096 is not supported"),
        ({"model_type": "qwen2", "num_experts": 8}, "num_experts=8 is not supported"),
        ({"model_type": "qwen3", "attention_bias": True}, "attention_bias=true is not supported"),
        ({"model_type": "qwen2_moe"}, "model_type='qwen2_moe' is not supported"),
        (
            {"model_type": "llama", "no_rope_layers": [1, 0]},
            "no_rope_layers=[1, 0] is not supported",
        ),
        (
            {"model_type": "smollm3", "use_sliding_window": True, "sliding_window": 64},
            "use_sliding_window=True is not supported",
        ),
        (
            {"model_type": "smollm3", "layer_types": ["sliding_attention", "full_attention"]},
            "layer_types=['sliding_attention', 'full_attention'] is not supported",
        ),
        ({"model_type": "smollm3", "no_rope_layers": [1, 0, 1]}, "no_rope_layers=[1, 0, 1]"),
        (
            {"model_type": "qwen2", "architectures": ["LlamaForCausalLM"]},
            "valid: ['Qwen2ForCausalLM']",
        ),
    ],
)
def test_refused_fields_are_one_line(changes, message):
    with pytest.raises(InteropError) as e:
        config_from_hf({**_shape(), **changes})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_model_with_bias_and_qk_norm_has_no_family():
    with pytest.raises(
        InteropError,
        match="no Hugging Face family has qkv_bias=True, o_bias=False, mlp_bias=False, "
        "qk_norm=True",
    ):
        family_of(ModelConfig(qkv_bias=True, qk_norm=True))


# ---------------------------------------------------------------------------------------------
# Export and import through the commands
# ---------------------------------------------------------------------------------------------

FAMILY_RUNS = {
    "qwen2": ("model.qkv_bias=true",),
    "qwen3": ("model.qk_norm=true", "model.head_dim=32", "model.scan_layers=false"),
    "llama3": (
        "model.rope_scaling=llama3",
        "model.rope_factor=4.0",
        "model.rope_original_max_len=64",
        "model.rope_low_freq_factor=2.0",
        "model.rope_high_freq_factor=8.0",
    ),
    "smollm3": ("model.no_rope_layers=1,0,1,0",),  # nano: 4 layers, scanned
}


@pytest.fixture(scope="module")
def family_exports(tmp_path_factory):
    """One nano run per family, trained one step, exported; then its tensors perturbed (random
    biases and q/k norm scales: a trained model's are not 0 and 1) and written back, so the
    import has something to get wrong."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    base = [
        "train.progress=false",
        "train.tensorboard=false",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.steps=1",
        "data.corpus=pydocs",
    ]
    from compactlm.config import make_config

    out = {}
    rng = np.random.default_rng(0)
    for name, overrides in FAMILY_RUNS.items():
        root = tmp_path_factory.mktemp(name)
        run(make_config("nano", [*base, *overrides]), root / "run")
        assert cli("export", str(root / "run"), "format=hf", f"workdir={root / 'hf'}") == 0
        w = load_file(root / "hf" / "model.safetensors")
        for k in w:
            if k.endswith(".bias"):
                w[k] = rng.normal(0, 0.5, w[k].shape).astype(w[k].dtype)
            if k.endswith(("q_norm.weight", "k_norm.weight")):
                w[k] = rng.normal(1, 0.3, w[k].shape).astype(w[k].dtype)
        save_file(w, root / "hf" / "model.safetensors", metadata={"format": "pt"})
        # hf_foreign: without the compactlm block (which restores the run's config whatever
        # HF's keys say), so the import reads the family's own fields, as for a checkpoint
        # from elsewhere.
        shutil.copytree(root / "hf", root / "hf_foreign")
        c = json.loads((root / "hf" / "config.json").read_text())
        del c["compactlm"]
        (root / "hf_foreign" / "config.json").write_text(json.dumps(c))
        out[name] = root
    yield out
    mp.undo()


def _our_logits(run_dir: Path, tokens: np.ndarray) -> np.ndarray:
    cfg, _, params, _ = hf.load_run_params(run_dir)
    model = nnx.eval_shape(lambda: Transformer(cfg.model, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return np.asarray(model(tokens[None]))[0]


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_export_names_the_family_and_import_matches_the_reference(family, family_exports, tmp_path):
    hf_dir = family_exports[family] / "hf_foreign"
    c = json.loads((hf_dir / "config.json").read_text())
    expect = {
        "qwen2": ("qwen2", "Qwen2ForCausalLM"),
        "qwen3": ("qwen3", "Qwen3ForCausalLM"),
        "llama3": ("llama", "LlamaForCausalLM"),
        "smollm3": ("smollm3", "SmolLM3ForCausalLM"),
    }[family]
    assert (c["model_type"], c["architectures"]) == (expect[0], [expect[1]])
    names = set(load_file(hf_dir / "model.safetensors"))
    assert ("model.layers.0.self_attn.q_proj.bias" in names) == (family == "qwen2")
    assert ("model.layers.0.self_attn.q_norm.weight" in names) == (family == "qwen3")
    if family == "llama3":
        assert c["rope_scaling"]["rope_type"] == "llama3"
    assert c.get("no_rope_layers") == ([1, 0, 1, 0] if family == "smollm3" else None)
    assert cli("import", str(hf_dir), f"workdir={tmp_path / 'in'}") == 0
    tokens = np.random.default_rng(1).integers(0, c["vocab_size"], 40)
    ours = _our_logits(tmp_path / "in", tokens)
    np.testing.assert_allclose(ours, reference_logits(hf_dir, tokens), **tol("model_f32"))
    # export -> import -> export is bit-exact on every tensor
    assert cli("export", str(tmp_path / "in"), "format=hf", f"workdir={tmp_path / 'out'}") == 0
    a, b = (
        load_file(hf_dir / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("command", ["quantize", "prune"])
def test_qkv_biases_stay_dense_through_compression(command, family_exports, tmp_path):
    """quantize / prune pack the block linears' kernels; the q/k/v biases are no linear's: they
    come out of compress → merge → export bit-exact. (The run keeps its compactlm block: `merge`
    refuses an imported run's data.tokenizer=hf, a limitation of merge, not of the family.)"""
    hf_dir = family_exports["qwen2"] / "hf"
    assert cli("import", str(hf_dir), f"workdir={tmp_path / 'in'}") == 0
    args = (
        ["method=rtn", "format=int4", "group_size=32"]
        if command == "quantize"
        else ["method=magnitude"]
    )
    assert cli(command, str(tmp_path / "in"), *args, f"workdir={tmp_path / 'c'}") == 0
    assert cli("merge", str(tmp_path / "c"), f"workdir={tmp_path / 'm'}", "dequantize=true") == 0
    assert cli("export", str(tmp_path / "m"), f"workdir={tmp_path / 'out'}") == 0
    a, b = (
        load_file(hf_dir / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    biases = [k for k in a if k.endswith(".bias")]
    n_layers = json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"]
    assert len(biases) == 3 * n_layers and np.abs(a[biases[0]]).max() > 0.1
    for k in biases:
        np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------------------------
# Against transformers itself (fixtures from scripts/make_hf_fixtures.py, when present)
# ---------------------------------------------------------------------------------------------

SUPPORTED_FIXTURES = ("qwen2", "qwen3", "llama3", "llama3_untied", "smollm3", "gemma3_text")
FIXTURE_DIRS = [FIXTURES / name for name in SUPPORTED_FIXTURES]  # committed: missing = failure


def _padded(fixture: Path, config_name: str = "config.json", scan: bool = False):
    """(cfg, model, V, tensors) of a fixture imported as `compactlm import` does: its vocabulary
    (not a multiple of 64) padded inside compactlm, the padding ids masked (model.vocab_valid)."""
    c = json.loads((fixture / config_name).read_text())
    V = c["vocab_size"]
    tensors = dict(load_file(fixture / "model.safetensors"))
    cfg = config_from_hf(c, [f"model.scan_layers={str(scan).lower()}"])
    assert (cfg.model.vocab_size, cfg.model.vocab_valid) == (padded_vocab_size(V), V)
    model = Transformer(cfg.model, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    loaded = from_hf_tensors(tensors, nnx.to_pure_dict(state), cfg.model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, loaded))
    nnx.update(model, state)
    return cfg, model, V, tensors


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=[p.name for p in FIXTURE_DIRS])
def test_import_matches_transformers(fixture, capsys):
    """logits within 1e-4 of transformers' (f32), greedy decoding through the KV cache equals
    transformers' greedy tokens, and our tensors export back bit-exact."""
    from compactlm.models.generate import generate

    ref = np.load(fixture / "reference.npz")
    cfg, model, V, tensors = _padded(fixture)
    full = np.asarray(model(jnp.asarray(ref["input_ids"], jnp.int32)))
    assert full.shape[-1] == cfg.model.vocab_size > V and np.all(full[..., V:] == PADDING_LOGIT)
    logits = full[..., :V]
    diff = float(np.max(np.abs(logits - ref["logits"])))
    with capsys.disabled():
        print(f"\n{fixture.name}: max |logit diff| vs transformers = {diff:.3g}")
    assert diff < 1e-4
    prompt = np.asarray(ref["greedy_prompt"], np.int32)
    n = ref["greedy_tokens"].shape[1]
    out = generate(model, prompt, max_new_tokens=n, temperature=0.0)  # the mask alone suffices
    np.testing.assert_array_equal(np.asarray(out)[:, prompt.shape[1] :], ref["greedy_tokens"])
    back = to_hf_tensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg.model)
    if cfg.model.tie_embeddings:
        tensors.pop("lm_head.weight", None)
    assert set(back) == set(k for k in tensors if not k.endswith("rotary_emb.inv_freq"))
    for k, w in back.items():
        np.testing.assert_array_equal(w, tensors[k])
    for other in fixture.glob("config.transformers*.json"):  # the other generation's spelling
        c = json.loads(other.read_text())
        assert config_from_hf(c, ["model.scan_layers=false"]).model == cfg.model


def test_smollm3_flags_read_as_transformers_does_and_scan_carries_them():
    """no_rope_layers[i] = 1: layer i USES RoPE (the opposite reading is far off transformers'
    logits); scanned layers (the flags as scanned data) give the unrolled logits."""
    ref = np.load(FIXTURES / "smollm3" / "reference.npz")
    cfg, model, V, _ = _padded(FIXTURES / "smollm3")
    assert cfg.model.no_rope_layers == (1, 1, 0)
    tokens = jnp.asarray(ref["input_ids"], jnp.int32)
    unrolled = np.asarray(model(tokens))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def logits_of(m):
        other = Transformer(m, rngs=nnx.Rngs(0))
        state = nnx.state(other, nnx.Param)
        tree = params
        if m.scan_layers:  # stack the per-layer trees on L
            tree = {
                **params,
                "layers": jax.tree.map(lambda *a: jnp.stack(a), *params["layers"].values()),
            }
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))
        nnx.update(other, state)
        return np.asarray(other(tokens))

    scanned = logits_of(dataclasses.replace(cfg.model, scan_layers=True))
    np.testing.assert_allclose(scanned, unrolled, **tol("model_f32"))
    flipped = logits_of(dataclasses.replace(cfg.model, no_rope_layers=(0, 0, 1)))
    assert np.max(np.abs(flipped[..., :V] - ref["logits"])) > 1e-2


# config.json keys export does not write back: inert or derived ones (transformers' defaults;
# Qwen's max_window_layers only matters with use_sliding_window; layer_types of full attention
# only; SmolLM3's interval is spelled out in no_rope_layers; Gemma's pattern in layer_types).
INERT_KEYS = {
    "transformers_version",
    "layer_types",
    "max_window_layers",
    "no_rope_layer_interval",
    "sliding_window_pattern",
}


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=[p.name for p in FIXTURE_DIRS])
def test_export_writes_the_fixture_config_back(fixture):
    """Every config.json field transformers wrote (4.x spelling, which export writes) comes
    back from import -> export with its value, except the inert keys above (and Gemma's
    layer_types come back too: they are not inert there)."""
    import types

    c = json.loads((fixture / "config.transformers4.json").read_text())
    ids = {n: c.get(f"{n}_token_id") for n in ("bos", "eos", "pad")}
    tok = types.SimpleNamespace(kind="hf", **{f"{n}_id": v for n, v in ids.items()})
    ours = hf.hf_config(config_from_hf(c), tok)
    inert = INERT_KEYS - ({"layer_types"} if c.get("sliding_window") else set())
    assert {k: c[k] for k in c if k not in inert} == {k: ours.get(k) for k in c if k not in inert}


GEMMA_REFUSED = [
    ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping=50.0 is not supported"),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0 is not supported"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention=True is not supported"),
    ({"hidden_activation": "gelu"}, "hidden_activation='gelu' is not supported"),
    ({"layer_types": ["chunked_attention"] * 3}, "layer_types=['chunked_attention'"),
    (
        {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
        "rope_parameters.sliding_attention.rope_type='linear' is not supported",
    ),
    (
        {"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}},
        "rope_parameters.rope_type='yarn' is not supported",
    ),
]


@pytest.mark.parametrize("changes, message", GEMMA_REFUSED)
def test_gemma3_fields_it_does_not_compute_are_refused_in_one_line(changes, message):
    c = json.loads((FIXTURES / "gemma3_text" / "config.json").read_text()) | changes
    with pytest.raises(InteropError) as e:
        config_from_hf(c)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_gemma3_sliding_layers_and_window_matter():
    """The fixture's T = 24 is past its window of 8: attending globally in the local layers,
    or rotating them at the global base, is far off transformers' logits."""
    ref = np.load(FIXTURES / "gemma3_text" / "reference.npz")
    cfg, model, V, _ = _padded(FIXTURES / "gemma3_text")
    assert cfg.model.sliding_layers == (1, 0, 1) and cfg.model.sliding_window == 8
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tokens = jnp.asarray(ref["input_ids"], jnp.int32)
    for change in ({"sliding_window": 0, "sliding_layers": ()}, {"rope_local_theta": 1e6}):
        other = Transformer(dataclasses.replace(cfg.model, **change), rngs=nnx.Rngs(0))
        state = nnx.state(other, nnx.Param)
        nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
        nnx.update(other, state)
        assert np.max(np.abs(np.asarray(other(tokens))[..., :V] - ref["logits"])) > 1e-3, change


def test_cli_import_pads_any_vocab_and_export_writes_the_checkpoint_back(tmp_path, capsys):
    """`compactlm import` of a vocabulary that is not a multiple of 64 (456, with o / MLP
    biases, untied): eval runs on it, and `export` writes the fixture's own tensors (456 rows)
    and config fields back, bit for bit."""
    src = FIXTURES / "llama3_untied"
    run, out = tmp_path / "run", tmp_path / "hf"
    assert cli("import", str(src), f"workdir={run}") == 0
    assert "vocab 456 (padded to 512)" in capsys.readouterr().out
    assert cli("eval", str(run), "data.corpus=pydocs", "train.eval_tokens=2048") == 0
    assert cli("export", str(run), f"workdir={out}") == 0
    theirs, ours = load_file(src / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(ours) == set(theirs)
    for name, w in theirs.items():
        np.testing.assert_array_equal(ours[name], w, err_msg=name)
    a, b = (json.loads((d / "config.json").read_text()) for d in (src, out))
    for key in ("vocab_size", "attention_bias", "mlp_bias", "tie_word_embeddings", "head_dim"):
        assert b[key] == a[key], key


def test_multimodal_gemma3_imports_its_text_tower(tmp_path, capsys):
    """A Gemma3ForConditionalGeneration checkpoint (config.json and tensor layout as transformers
    writes them, fixtures/hf/gemma3): import takes the text tower (its text_config, its
    `language_model.model.*` tensors), leaves the vision tower and projector out, and gives
    gemma3_text's logits (the script checked that transformers' multimodal model does too);
    export writes it as the text family."""
    text_dir, layout_dir = FIXTURES / "gemma3_text", FIXTURES / "gemma3"
    layout = json.loads((layout_dir / "layout.json").read_text())
    text = load_file(text_dir / "model.safetensors")
    tensors = {
        name: text[t["text"]] if t["text"] else np.zeros(t["shape"], t["dtype"])
        for name, t in layout.items()
    }
    assert sum(t["text"] is None for t in layout.values()) > 10  # the vision tower is there
    src = tmp_path / "gemma3"
    src.mkdir()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(layout_dir / "config.json", src / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(text_dir / name, src / name)
    hf_json = json.loads((src / "config.json").read_text())
    assert hf_json["model_type"] == "gemma3" and "vision_config" in hf_json
    cfg = config_from_hf(hf_json, ["model.scan_layers=false"])
    assert cfg.model == _padded(text_dir)[0].model
    run, out = tmp_path / "run", tmp_path / "hf"
    assert cli("import", str(src), f"workdir={run}") == 0
    _, _, params, _ = hf.load_run_params(run)
    model = Transformer(cfg.model, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    ref = np.load(text_dir / "reference.npz")
    logits = np.asarray(model(jnp.asarray(ref["input_ids"], jnp.int32)))[..., :480]
    assert np.max(np.abs(logits - ref["logits"])) < 1e-4
    assert cli("export", str(run), f"workdir={out}") == 0
    exported = json.loads((out / "config.json").read_text())
    assert exported["model_type"] == "gemma3_text"
    back = load_file(out / "model.safetensors")
    assert set(back) == set(text) and all(np.array_equal(back[k], text[k]) for k in text)


FAMILY_REFUSALS = [
    ("qwen2", {"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ("qwen3", {"attention_bias": True}, "attention_bias=true is not supported"),
    ("qwen3", {"num_experts": 8}, "num_experts=8 is not supported (mixture of experts"),
    ("smollm3", {"use_sliding_window": True}, "use_sliding_window=True is not supported"),
    ("llama3", {"rope_scaling": {"rope_type": "longrope"}}, "rope_type='longrope'"),
    ("llama3", {"model_type": "mistral"}, "model_type='mistral' is not supported"),
    ("gemma3_text", {"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ("gemma3_text", {"dtype": "int8"}, "dtype='int8' is not supported"),
    ("gemma3_text", {"vocab_size": 500}, "config.json implies [500, 32]"),
]


@pytest.mark.parametrize(
    "fixture, changes, message",
    FAMILY_REFUSALS,
    ids=[f"{f}-{next(iter(c))}" for f, c, _ in FAMILY_REFUSALS],
)
def test_cli_refuses_what_a_family_does_not_compute(fixture, changes, message, tmp_path, capsys):
    """`compactlm import` of a family checkpoint with one field it does not compute: exit 2,
    one line naming the field, nothing written."""
    src = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, src)
    c = json.loads((src / "config.json").read_text()) | changes
    (src / "config.json").write_text(json.dumps(c))
    assert cli("import", str(src), f"workdir={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == [fixture]


@pytest.mark.parametrize("fixture", FIXTURE_DIRS, ids=[p.name for p in FIXTURE_DIRS])
def test_scanned_import_matches_transformers(fixture):
    """Imported with scan_layers=true (the real shapes' default past 8 layers): the stacked
    [L, ...] parameters are filled layer by layer, the per-layer flags scanned; same logits."""
    ref = np.load(fixture / "reference.npz")
    cfg, model, V, tensors = _padded(fixture, scan=True)
    logits = np.asarray(model(jnp.asarray(ref["input_ids"], jnp.int32)))[..., :V]
    assert np.max(np.abs(logits - ref["logits"])) < 1e-4
    back = to_hf_tensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg.model)
    assert all(np.array_equal(w, tensors[k]) for k, w in back.items())
