"""Hugging Face config.json <-> compactlm Config: the Llama mapping, and what is refused.

The bottom of interop/ (InteropError lives here). transformers writes two generations of
config.json; a field that changes the computation compactlm does not do is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from compactlm.config import Config, ConfigError, apply_overrides, from_json, to_dict

HF_CONFIG = "config.json"


class InteropError(ValueError):
    """A checkpoint or field compactlm cannot read or write; one line naming the field/tensor."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Family:
    """What a model family is, as data: its config.json names, the ModelConfig fields they map
    to, and the values it fixes. Export writes them from this table; import refuses another
    family or another fixed value from it (`config_from_llama` reads Llama's keys with
    transformers' defaults for the optional ones). Adding a family is adding one of these (and
    a ModelConfig field where its math is new), not a branch elsewhere."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures" (transformers' class for causal LM)
    # config.json key -> ModelConfig field, for the fields that map one to one.
    fields: tuple[tuple[str, str], ...]
    # config.json key -> the one value compactlm computes for this family; any other value is
    # refused on import, and export writes exactly these.
    fixed: tuple[tuple[str, Any], ...]


LLAMA = Family(
    model_type="llama",
    architecture="LlamaForCausalLM",
    fields=(
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
    ),
    fixed=(("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)),
)
FAMILIES = {f.model_type: f for f in (LLAMA,)}


def llama_config(cfg: Config, tokenizer: Any, family: Family = LLAMA) -> dict[str, Any]:
    """transformers' config.json fields of `family` for `cfg.model`, plus the compactlm config."""
    m = cfg.model
    return {
        "architectures": [family.architecture],
        "model_type": family.model_type,
        **{key: getattr(m, name) for key, name in family.fields},
        "head_dim": m.resolved_head_dim,
        **dict(family.fixed),
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": m.param_dtype,
        "use_cache": True,
        "compactlm": {"tokenizer": tokenizer.kind, "config": to_dict(cfg)},
    }


def _require(hf: Mapping[str, Any], key: str) -> Any:
    if key not in hf:
        raise InteropError(f"config.json has no {key!r} (a Llama config needs it)")
    return hf[key]


def _check_supported(hf: Mapping[str, Any]) -> None:
    """Fields of a Llama-family config that change the computation compactlm does not do."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise InteropError(
            f"config.json model_type={model_type!r} is not supported; valid: "
            + ", ".join(map(repr, FAMILIES))
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
                    "biases)"
                )
            raise InteropError(f"config.json {key}={hf[key]!r} is not supported; valid: {value!r}")
    for key in ("rope_scaling", "rope_parameters"):
        rope = hf.get(key)
        kind = (rope or {}).get("rope_type", (rope or {}).get("type", "default"))
        if kind != "default":
            raise InteropError(
                f"config.json {key}.rope_type={kind!r} is not supported; valid: 'default' "
                "(plain RoPE) or no rope_scaling"
            )
    for key in ("sliding_window", "layer_types", "no_rope_layers"):
        if hf.get(key) not in (None, False):
            raise InteropError(f"config.json {key}={hf[key]!r} is not supported (full attention)")
    # pretraining_tp > 1 only changes how torch slices the same matmuls: accepted as is.


def config_from_llama(hf: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """A compactlm Config for a Llama config.json (the compactlm block first, if present)."""
    _check_supported(hf)
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
    }
    if model["vocab_size"] % 64:
        raise InteropError(
            f"config.json vocab_size={model['vocab_size']} is not a multiple of 64; compactlm "
            "pads vocabularies to a multiple of 64 (pad the embedding before importing)"
        )
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
    if model["head_dim"] == d_model // n_heads and d_model % n_heads == 0:
        model["head_dim"] = base.model.head_dim  # None = derived, as our own configs say
    try:
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, **model))
    except (TypeError, ValueError) as e:
        raise InteropError(f"config.json describes a model compactlm cannot build: {e}") from e
    return apply_overrides(cfg, overrides)
