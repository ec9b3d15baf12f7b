"""Hugging Face config.json <-> compactlm Config: one Family per architecture, and what is refused.

The bottom of interop/ (InteropError lives here). transformers writes two generations of
config.json; a field that changes the computation compactlm does not do is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from compactlm.config import Config, ConfigError, apply_overrides, from_json, to_dict
from compactlm.data.config import padded_vocab_size

HF_CONFIG = "config.json"


class InteropError(ValueError):
    """A checkpoint or field compactlm cannot read or write; one line naming the field/tensor."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """What a model family is, as data: its config.json names, the ModelConfig fields they map
    to, and the values it fixes. Export writes them from this table; import refuses another
    family or another fixed value from it (`config_from_hf` reads the keys with transformers'
    defaults for the optional ones). Adding a family is adding one of these (and a ModelConfig
    field where its math is new, read in one place of the decoder), not a branch elsewhere."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures" (transformers' class for causal LM)
    # config.json key -> ModelConfig field, for the fields that map one to one.
    fields: tuple[tuple[str, str], ...]
    # config.json key -> the one value compactlm computes for this family; any other value is
    # refused on import, and export writes exactly these.
    fixed: tuple[tuple[str, Any], ...]
    # ModelConfig field -> the value this family's architecture implies (its difference from
    # Llama); import sets them, export picks the family whose values the model has.
    model: tuple[tuple[str, Any], ...] = ()
    # config.json booleans that switch ModelConfig fields on together (Llama's attention_bias:
    # qkv_bias and o_bias); import reads them (default false), export writes them.
    switches: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The config has Qwen's `use_sliding_window` switch: when it is false, `sliding_window` and
    # `max_window_layers` are inert (transformers ignores them) and accepted.
    sliding_switch: bool = False
    # The config has SmolLM3's `no_rope_layers` (1 = the layer uses RoPE): read into
    # ModelConfig.no_rope_layers, written back; the family of a model with a layer without RoPE.
    no_rope: bool = False
    # The config has Gemma 3's sliding layers: `sliding_window`, `layer_types`
    # (sliding_attention / full_attention) and RoPE per layer type (5.x: rope_parameters by
    # layer type; 4.x: rope_theta + rope_scaling for the global layers, rope_local_base_freq).
    sliding: bool = False


_FIELDS = (
    ("vocab_size", "vocab_size"),
    ("hidden_size", "d_model"),
    ("intermediate_size", "d_ff"),
    ("num_hidden_layers", "n_layers"),
    ("num_attention_heads", "n_heads"),
    ("num_key_value_heads", "n_kv_heads"),
    ("max_position_embeddings", "max_seq_len"),
    ("rms_norm_eps", "norm_eps"),
    ("rope_theta", "rope_theta"),
    ("tie_word_embeddings", "tie_embeddings"),
    ("initializer_range", "init_std"),
)
# The ModelConfig fields that say which architecture a model is, at Llama's values (a family
# sets some in `model` or `switches`; the others must keep these).
ARCHITECTURE = (
    ("qkv_bias", False),
    ("o_bias", False),
    ("mlp_bias", False),
    ("qk_norm", False),
    ("norm_plus_one", False),
    ("sandwich_norms", False),
    ("mlp_activation", "silu"),
    ("embed_scale", False),
    ("query_pre_attn_scalar", 0.0),
    ("sliding_window", 0),
)
# Llama: biases on q, k, v and o with attention_bias, on gate, up and down with mlp_bias.
LLAMA = Family(
    model_type="llama",
    architecture="LlamaForCausalLM",
    fields=_FIELDS,
    fixed=(("hidden_act", "silu"),),
    switches=(("attention_bias", ("qkv_bias", "o_bias")), ("mlp_bias", ("mlp_bias",))),
)
# Qwen2 / Qwen2.5: Llama with biases on q, k, v (always; its config has no switch).
QWEN2 = Family(
    model_type="qwen2",
    architecture="Qwen2ForCausalLM",
    fields=_FIELDS,
    fixed=(("hidden_act", "silu"), ("use_sliding_window", False)),
    model=(("qkv_bias", True),),
    sliding_switch=True,
)
# Qwen3 (dense): Llama with a per-head RMSNorm on q and k before RoPE; head_dim is its own key.
QWEN3 = Family(
    model_type="qwen3",
    architecture="Qwen3ForCausalLM",
    fields=_FIELDS,
    fixed=(("hidden_act", "silu"), ("attention_bias", False), ("use_sliding_window", False)),
    model=(("qk_norm", True),),
    sliding_switch=True,
)
# SmolLM3: Llama whose layers with no_rope_layers[i] = 0 attend without RoPE (NoPE).
SMOLLM3 = Family(
    model_type="smollm3",
    architecture="SmolLM3ForCausalLM",
    fields=_FIELDS,
    fixed=(
        ("hidden_act", "silu"),
        ("attention_bias", False),
        ("mlp_bias", False),
        ("use_sliding_window", False),
    ),
    sliding_switch=True,
    no_rope=True,
)
# Gemma 3 (text; gemma3_text, the 270M / 1B checkpoints and the text tower of the larger ones):
# (1 + w) norms, sandwich norms, GeGLU, embeddings × √D, q/k norms, its own attention scale,
# sliding-window layers with their own RoPE base.
GEMMA3 = Family(
    model_type="gemma3_text",
    architecture="Gemma3ForCausalLM",
    fields=(*_FIELDS, ("query_pre_attn_scalar", "query_pre_attn_scalar")),
    fixed=(
        ("hidden_activation", "gelu_pytorch_tanh"),
        ("attention_bias", False),
        ("attn_logit_softcapping", None),
        ("final_logit_softcapping", None),
        ("use_bidirectional_attention", False),
    ),
    model=(
        ("qk_norm", True),
        ("norm_plus_one", True),
        ("sandwich_norms", True),
        ("mlp_activation", "gelu_tanh"),
        ("embed_scale", True),
    ),
    sliding=True,
)
FAMILIES = {f.model_type: f for f in (LLAMA, QWEN2, QWEN3, SMOLLM3, GEMMA3)}

# config.json rope_type -> ModelConfig.rope_scaling, and the keys each reads (ModelConfig field,
# config key, transformers' default or None = required).
_ROPE_KINDS = {"default": "none", "linear": "linear", "llama3": "llama3"}
_ROPE_KEYS = {
    "linear": (("rope_factor", "factor", None),),
    "llama3": (
        ("rope_factor", "factor", None),
        ("rope_low_freq_factor", "low_freq_factor", None),
        ("rope_high_freq_factor", "high_freq_factor", None),
        ("rope_original_max_len", "original_max_position_embeddings", None),
    ),
}


def _is_family(model: Any, family: Family) -> bool:
    """Does `model` (a ModelConfig) have `family`'s architecture: its fixed values, each
    switch's fields equal to one another, every other architecture field at Llama's value."""
    fixed = dict(ARCHITECTURE) | dict(family.model)
    for _, name in family.fields:  # a number the family's config.json carries
        fixed.pop(name, None)
    if family.sliding:
        fixed.pop("sliding_window")
    for _, names in family.switches:
        if len({getattr(model, n) for n in names}) > 1:
            return False
        for n in names:
            fixed.pop(n)
    same = all(getattr(model, name) == value for name, value in fixed.items())
    return same and family.no_rope == (model.rope_flags() is not None)


def _describe(family: Family) -> str:
    parts = [f"{n}={v}" for n, v in family.model]
    parts += [f"{key}: {'='.join(names)}" for key, names in family.switches]
    parts += ["no_rope_layers"] if family.no_rope else []
    parts += ["sliding_window"] if family.sliding else []
    return f"{family.model_type} ({', '.join(parts) or 'Llama'})"


def family_of(model: Any) -> Family:
    """The family whose architecture `model` (a ModelConfig) is; one line if none is."""
    for family in FAMILIES.values():
        if _is_family(model, family):
            return family
    have = ", ".join(f"{n}={getattr(model, n)}" for n, _ in ARCHITECTURE)
    raise InteropError(
        f"no Hugging Face family has {have}; valid: "
        + "; ".join(_describe(f) for f in FAMILIES.values())
    )


def _rope_json(m: Any) -> dict[str, Any] | None:
    """config.json's rope_scaling for `m` (None: plain RoPE)."""
    if m.rope_scaling == "none":
        return None
    kind = {v: k for k, v in _ROPE_KINDS.items()}[m.rope_scaling]
    return {"rope_type": kind, **{key: getattr(m, name) for name, key, _ in _ROPE_KEYS[kind]}}


def hf_config(cfg: Config, tokenizer: Any, family: Family | None = None) -> dict[str, Any]:
    """transformers' config.json fields of `cfg.model`'s family, plus the compactlm config."""
    m = cfg.model
    family = family or family_of(m)
    out = {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        **{key: getattr(m, name) for key, name in family.fields},
        "vocab_size": m.vocab_valid or m.vocab_size,  # the checkpoint's own, unpadded
        "head_dim": m.resolved_head_dim,
        **dict(family.fixed),
        "rope_scaling": _rope_json(m),
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": m.param_dtype,  # transformers 4.x's key
        "dtype": m.param_dtype,  # 5.x's
        "use_cache": True,
        "compactlm": {"tokenizer": tokenizer.kind, "config": to_dict(cfg)},
    }
    if family.sliding_switch:
        out |= {"sliding_window": None, "max_window_layers": m.n_layers}
    if family.no_rope:
        out["no_rope_layers"] = list(m.no_rope_layers) or [1] * m.n_layers
    if family.sliding:  # 4.x's spelling, which 5.x reads too (rope_parameters by layer type)
        flags = m.sliding_flags() or (False,) * m.n_layers
        out |= {
            "sliding_window": m.sliding_window or None,
            "layer_types": [_LAYER_TYPES[f] for f in flags],
            "rope_local_base_freq": m.rope_local_theta,
        }
    out |= {key: getattr(m, names[0]) for key, names in family.switches}
    return out


llama_config = hf_config  # the name before the family table


def _require(hf: Mapping[str, Any], key: str) -> Any:
    if key not in hf:
        raise InteropError(f"config.json has no {key!r} (a {hf.get('model_type')} config needs it)")
    return hf[key]


# Multimodal checkpoints whose text tower is a family above: model_type -> (the key of its text
# config, the family it is). Import takes the text tower only (interop/hf_tensors.py drops the
# vision tower and projector tensors); export writes that family.
TEXT_TOWERS = {"gemma3": ("text_config", "gemma3_text")}


def text_tower(hf: Mapping[str, Any]) -> Mapping[str, Any]:
    """A multimodal config.json's text tower as the text-only family's config (top-level
    token ids, dtype and tying fill what the text config leaves out); other configs as given."""
    if hf.get("model_type") not in TEXT_TOWERS:
        return hf
    key, model_type = TEXT_TOWERS[hf["model_type"]]
    text = hf.get(key)
    if not isinstance(text, Mapping):
        raise InteropError(f"config.json model_type={hf['model_type']!r} has no {key} object")
    inherited = ("tie_word_embeddings", "dtype", "torch_dtype")
    inherited += ("bos_token_id", "eos_token_id", "pad_token_id")
    family = FAMILIES[model_type]
    return {
        **{k: hf[k] for k in inherited if k in hf},
        **text,
        "model_type": model_type,
        "architectures": [family.architecture],
    }


def _check_supported(hf: Mapping[str, Any]) -> None:
    """Fields of a Llama-family config that change the computation compactlm does not do."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise InteropError(
            f"config.json model_type={model_type!r} is not supported; valid: "
            + ", ".join(map(repr, FAMILIES))
            + ", or the text tower of "
            + ", ".join(map(repr, TEXT_TOWERS))
        )
    family = FAMILIES[model_type]
    archs = hf.get("architectures") or [family.architecture]
    if archs != [family.architecture]:
        raise InteropError(
            f"config.json architectures={archs} is not supported; valid: [{family.architecture!r}]"
        )
    for key, value in family.fixed:
        if hf.get(key, value) != value:
            if key.endswith("_bias"):
                raise InteropError(
                    f"config.json {key}={json.dumps(hf[key])} is not supported (compactlm has no "
                    f"{key.removesuffix('_bias')} biases in a {family.model_type} model)"
                )
            raise InteropError(f"config.json {key}={hf[key]!r} is not supported; valid: {value!r}")
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if hf.get(key):
            raise InteropError(
                f"config.json {key}={hf[key]!r} is not supported (mixture of experts; compactlm's "
                "decoder is dense)"
            )
    _rope_fields(_global_rope(hf, family))
    inert = ("sliding_window", "max_window_layers") if family.sliding_switch else ()
    inert += ("sliding_window", "layer_types") if family.sliding else ()
    for key in ("sliding_window", "layer_types", "no_rope_layers"):
        value = hf.get(key)
        if key in inert or value in (None, False) or (key == "no_rope_layers" and family.no_rope):
            continue
        if key == "layer_types" and set(value) <= {"full_attention"}:
            continue
        raise InteropError(f"config.json {key}={value!r} is not supported (full attention)")
    # pretraining_tp > 1 only changes how torch slices the same matmuls: accepted as is.


def _rope_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """ModelConfig rope_* fields from `rope_scaling` (transformers 4.x) or `rope_parameters`
    (5.x); refuses the scalings compactlm does not compute (yarn, longrope, dynamic, ...)."""
    out: dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key) or {}
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in _ROPE_KINDS:
            raise InteropError(
                f"config.json {key}.rope_type={kind!r} is not supported; valid: "
                + ", ".join(map(repr, _ROPE_KINDS))
                + " or no rope_scaling"
            )
        if kind == "default":
            continue  # plain RoPE (5.x's rope_parameters also carries rope_theta)
        fields = {"rope_scaling": _ROPE_KINDS[kind]}
        for name, sub, default in _ROPE_KEYS.get(kind, ()):
            if sub not in rope and default is None:
                raise InteropError(f"config.json {key}.rope_type={kind!r} needs {key}.{sub}")
            value = rope.get(sub, default)
            fields[name] = int(value) if name == "rope_original_max_len" else float(value)
        if out and out != fields:
            raise InteropError(
                "config.json rope_scaling and rope_parameters disagree; valid: one scaling"
            )
        out = fields
    return out


_LAYER_TYPES = {True: "sliding_attention", False: "full_attention"}


def _global_rope(hf: Mapping[str, Any], family: Family) -> Mapping[str, Any]:
    """The RoPE keys of the global layers, as a config without layer types spells them: 5.x
    Gemma nests rope_parameters by layer type ({"full_attention": {...}, ...})."""
    params = hf.get("rope_parameters") or {}
    if not (family.sliding and set(params) & set(_LAYER_TYPES.values())):
        return hf
    return {**hf, "rope_parameters": params.get("full_attention") or {}}


def _sliding_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Gemma 3's sliding_window, sliding_layers (from layer_types, or 4.x's
    sliding_window_pattern: every pattern-th layer global) and the local layers' RoPE base."""
    n = _require(hf, "num_hidden_layers")
    types = hf.get("layer_types")
    if types is None:
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        types = [_LAYER_TYPES[(i + 1) % pattern != 0] for i in range(n)]
    if len(types) != n or set(types) - set(_LAYER_TYPES.values()):
        raise InteropError(
            f"config.json layer_types={types!r} is not supported; valid: {n} of "
            + ", ".join(map(repr, _LAYER_TYPES.values()))
        )
    sliding = tuple(int(t == "sliding_attention") for t in types)
    window = int(hf.get("sliding_window") or 0)
    if any(sliding) and window < 1:
        raise InteropError(f"config.json has sliding layers but sliding_window={window!r}")
    local = (hf.get("rope_parameters") or {}).get("sliding_attention") or {}
    kind = local.get("rope_type", "default")
    if kind != "default":
        raise InteropError(
            f"config.json rope_parameters.sliding_attention.rope_type={kind!r} is not supported; "
            "valid: 'default' (the local layers' plain RoPE)"
        )
    theta = local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))
    return {
        "sliding_window": window if any(sliding) else 0,
        "sliding_layers": sliding if any(sliding) and not all(sliding) else (),
        "rope_local_theta": float(theta),
    }


def _no_rope_layers(hf: Mapping[str, Any]) -> tuple[int, ...]:
    """SmolLM3's per-layer RoPE flags (1 = uses RoPE), or transformers' default from
    `no_rope_layer_interval` (every interval-th layer without); () when every layer uses it."""
    n = _require(hf, "num_hidden_layers")
    flags = hf.get("no_rope_layers")
    if flags is None:
        interval = hf.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n)]
    flags = tuple(int(f) for f in flags)
    return () if flags and all(flags) and len(flags) == n else flags


def _param_dtype(hf: Mapping[str, Any]) -> str:
    """model.param_dtype for the checkpoint's weights (`dtype`, 4.x: `torch_dtype`): bfloat16
    stays bfloat16 (exact, and no 2x copy in memory: a real checkpoint is stored so); float16
    widens to float32 (exact; compactlm keeps no f16 parameters); float32 or none: float32."""
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise InteropError(
            f"config.json dtype={dtype!r} is not supported; valid: 'float32', 'bfloat16', 'float16'"
        )
    return "bfloat16" if dtype == "bfloat16" else "float32"


def config_from_hf(hf: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """A compactlm Config for a config.json of any family in FAMILIES (the compactlm block
    first, if present)."""
    hf = text_tower(hf)
    _check_supported(hf)
    family = FAMILIES[hf["model_type"]]
    sliding = _sliding_fields(hf) if family.sliding else {}
    hf = _global_rope(hf, family)
    n_heads = _require(hf, "num_attention_heads")
    d_model = _require(hf, "hidden_size")
    rope = hf.get("rope_parameters") or {}
    model = {
        "vocab_size": _require(hf, "vocab_size"),
        "d_model": d_model,
        "n_layers": _require(hf, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": hf.get("head_dim") or d_model // n_heads,
        "d_ff": _require(hf, "intermediate_size"),
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "rope_theta": float(hf.get("rope_theta", rope.get("rope_theta", 10_000.0))),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        **dict(ARCHITECTURE),
        **dict(family.model),
        **{name: bool(hf.get(key, False)) for key, names in family.switches for name in names},
        "no_rope_layers": _no_rope_layers(hf) if family.no_rope else (),
        "rope_scaling": "none",
        **_rope_fields(hf),
        **{n: float(_require(hf, k)) for k, n in family.fields if (k, n) not in _FIELDS},
        **sliding,
    }
    # Any vocabulary: the embedding is padded to a multiple of 64 and the padding ids masked
    # (ModelConfig.vocab_valid); export writes the checkpoint's own size back.
    vocab = model["vocab_size"]
    model["vocab_size"] = padded_vocab_size(vocab)
    model["vocab_valid"] = vocab if model["vocab_size"] != vocab else 0
    block = hf.get("compactlm") or {}
    if "config" in block:
        try:
            base = from_json(json.dumps(block["config"]))
        except (ConfigError, TypeError, ValueError) as e:
            raise InteropError(f"config.json's compactlm block is not a valid config: {e}") from e
    else:
        base = Config(preset="hf")
        model["scan_layers"] = model["n_layers"] > 8  # compile time; unrolled is faster on CPU
        base = dataclasses.replace(
            base,
            data=dataclasses.replace(base.data, tokenizer="hf"),
            train=dataclasses.replace(
                base.train, seq_len=min(base.train.seq_len, model["max_seq_len"])
            ),
        )
    if "config" not in block:
        model["param_dtype"] = _param_dtype(hf)
    if model["head_dim"] == d_model // n_heads and d_model % n_heads == 0:
        model["head_dim"] = base.model.head_dim  # None = derived, as our own configs say
    try:
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, **model))
    except (TypeError, ValueError) as e:
        raise InteropError(f"config.json describes a model compactlm cannot build: {e}") from e
    return apply_overrides(cfg, overrides)


config_from_llama = config_from_hf  # the name before the family table
