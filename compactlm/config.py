"""The run configuration: sub-configs composed once, presets as deltas, `key.sub=value` overrides.

Every sub-config is a frozen keyword-only dataclass that lives beside the code that reads it
(`ModelConfig` in models/config.py, `DataConfig` in data/, ...). This module composes them,
defines the presets and implements the one override language used by the CLI, tests and sweeps:

    apply_overrides(cfg, ["model.d_model=256", "optim.lr=1e-3", "data.corpus=pydocs"])

Values are parsed against the field's annotated type (int, float, bool, str, Literal, Optional,
tuple); an unknown key, a wrong type or a value outside a Literal raises `ConfigError` whose
one-line message lists what is valid.

Validation has two places: each sub-config's `__post_init__` checks its own fields, and an
options class may define `check_combined()` for rules that join fields the user sets with
separate overrides (`train.seq_len` against `model.max_seq_len`, `sparsity` against `pattern`).
Overrides apply one at a time, so the states between two of them are never checked against such
rules: `apply_overrides` runs `check_combined()` once after the last one, `from_json` after
reading a saved config.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from compactlm.data.config import DataConfig
from compactlm.models.config import ModelConfig
from compactlm.train.config import MeshConfig, OptimConfig, TrainConfig


class ConfigError(ValueError):
    """A bad configuration key or value; the message is one line and names the valid choices."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a run needs; `config.json` in the run directory is `to_json()` of this."""

    preset: str = "tiny"  # the preset this config started from (recorded, not re-applied)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def check_combined(self) -> None:
        """Rules across sections (see the module docstring for when they run)."""
        if self.train.seq_len > self.model.max_seq_len:
            # RoPE has no table, so training would run; but every position past max_seq_len is
            # one that generation, the KV cache and export (max_position_embeddings) never use.
            raise ConfigError(
                f"train.seq_len={self.train.seq_len} is more than the model's context "
                f"model.max_seq_len={self.model.max_seq_len}; use train.seq_len <= "
                f"{self.model.max_seq_len} or raise model.max_seq_len"
            )
        try:
            self.model.check_adapter()
        except ValueError as e:
            raise ConfigError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Presets: small functions returning only the deltas from the defaults.
# ---------------------------------------------------------------------------------------------


def _replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    return dataclasses.replace(
        cfg,
        **{
            name: dataclasses.replace(getattr(cfg, name), **delta)
            for name, delta in sections.items()
        },
    )


def tiny() -> Config:
    """The default: ~0.9M params, beats gzip -9 on pystdlib in <= 10 minutes on 2 CPU cores."""
    # Unrolled layers: on XLA:CPU the scanned step spends ~13% of its time zero-filling and
    # dynamic-slicing the stacked [L, ...] residual buffers; unrolled is 1.10-1.12x faster at
    # 4 layers (docs/benchmarks.md) and compiles in about the same time.
    return _replace(Config(preset="tiny"), model=dict(scan_layers=False))


def nano() -> Config:
    """~0.2M params: the test preset (seconds per hundred steps on a CPU)."""
    return _replace(
        Config(preset="nano"),
        model=dict(d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=192, max_seq_len=128),
        train=dict(steps=300, batch_size=16, seq_len=128, eval_every=100, checkpoint_every=100),
        optim=dict(lr=3e-3, warmup_steps=30),
    )


def small() -> Config:
    """~12.7M params: a longer CPU run or a quick GPU run."""
    return _replace(
        Config(preset="small"),
        model=dict(d_model=384, n_layers=8, n_heads=6, n_kv_heads=2, d_ff=1024, max_seq_len=512),
        train=dict(steps=5000, batch_size=32, seq_len=512),
        optim=dict(lr=1e-3, warmup_steps=200),
    )


def base() -> Config:
    """~122M params (GPT-2 small scale, BPE vocab 32k): a GPU preset."""
    return _replace(
        Config(preset="base"),
        model=dict(
            d_model=768,
            n_layers=12,
            n_heads=12,
            n_kv_heads=4,
            d_ff=2816,
            max_seq_len=1024,
            compute_dtype="bfloat16",
        ),
        data=dict(tokenizer="bpe", bpe_vocab_size=32768),
        train=dict(steps=20000, batch_size=64, seq_len=1024),
        optim=dict(lr=6e-4, warmup_steps=1000),
    )


# Real model shapes (issue 18). Each is a published architecture, trained from scratch here: the
# model fields are the checkpoint's config.json (only those that differ from the defaults,
# which are Llama's: RMSNorm eps 1e-5, tied embeddings, head_dim = d_model / n_heads); the
# vocabulary is a byte-level BPE of the real size, trained on data.corpus, so the embedding and
# the parameter count are the published ones. tests/test_presets.py checks each against the
# config.json as `compactlm import` reads it and against transformers' parameter count of a
# model built from it (scripts/make_real_size_checkpoints.py PUBLISHED, --count). Their
# transformers config classes default to other models (LlamaConfig: Llama-2-7B; Qwen2Config:
# Qwen2-7B; Qwen3Config: Qwen3-8B), so every shape value below is set, not inherited.


def _real_shape(name: str, *, vocab: int, lr: float, **model: Any) -> Config:
    """A published architecture (`model` deltas, `vocab` ids) with one from-scratch recipe for
    one GPU: bf16 compute (as `base`), batches of 16 × 2048 tokens (GPT-3's context) with
    per-block rematerialisation, 20k steps with a 1k warm-up then cosine, and `lr` = GPT-3's for
    the nearest model size (Brown et al. 2020, Table 2.1: 125M 6e-4, 350M 3e-4, 760M 2.5e-4,
    1.3B 2e-4, 2.7B 1.6e-4). Weights + AdamW + activations (`compactlm info`): 16 GiB at
    smollm2-135m to 54 GiB at llama3.2-1b (an 80 GB H100); smollm3-3b's 76 GiB plus its
    gradients need an H200 or train.batch_size=8. The f32 logits of 16 × 2048 positions are
    most of the activations at a 151,936-id vocabulary."""
    return _replace(
        Config(preset=name),
        model=dict(compute_dtype="bfloat16", remat="block", **model),
        data=dict(tokenizer="bpe", bpe_vocab_size=vocab),
        train=dict(steps=20000, batch_size=16, seq_len=2048),
        optim=dict(lr=lr, warmup_steps=1000),
    )


def smollm2_135m() -> Config:
    """SmolLM2-135M: 134,515,008 params (Llama, 30 layers, GQA 9/3, tied, vocab 49,152)."""
    # HuggingFaceTB/SmolLM2-135M config.json: hidden 576, intermediate 1536, 30 layers, 9 heads,
    # 3 kv heads (head_dim 64), rope_theta 1e5, max_position_embeddings 8192 (2048 in its first
    # revision), rms_norm_eps 1e-5, initializer_range 576^-0.5 = 0.0417, tied.
    return _real_shape(
        "smollm2-135m", vocab=49152, lr=6e-4,
        d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536, max_seq_len=8192,
        rope_theta=100_000.0, init_std=576**-0.5,
    )  # fmt: skip


def smollm2_360m() -> Config:
    """SmolLM2-360M: 361,821,120 params (Llama, 32 layers, GQA 15/5, tied, vocab 49,152)."""
    # HuggingFaceTB/SmolLM2-360M config.json: hidden 960, intermediate 2560, 32 layers, 15 heads,
    # 5 kv heads (head_dim 64), rope_theta 1e5, max_position_embeddings 8192, rms_norm_eps 1e-5,
    # initializer_range 0.02, tied.
    return _real_shape(
        "smollm2-360m", vocab=49152, lr=3e-4,
        d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, d_ff=2560, max_seq_len=8192,
        rope_theta=100_000.0,
    )  # fmt: skip


def qwen2_5_0_5b() -> Config:
    """Qwen2.5-0.5B: 494,032,768 params (q/k/v biases, GQA 14/2, tied, vocab 151,936)."""
    # Qwen/Qwen2.5-0.5B config.json (Qwen2ForCausalLM): hidden 896, intermediate 4864, 24 layers,
    # 14 heads, 2 kv heads (head_dim 64), q/k/v biases, rope_theta 1e6, max_position_embeddings
    # 32768, rms_norm_eps 1e-6, tied, no sliding window. Its tokenizer has 151,665 ids; the
    # embedding's 151,936 rows are the vocabulary here.
    return _real_shape(
        "qwen2.5-0.5b", vocab=151936, lr=3e-4,
        d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, d_ff=4864, max_seq_len=32768,
        rope_theta=1_000_000.0, norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip


def qwen3_0_6b() -> Config:
    """Qwen3-0.6B: 596,049,920 params (q/k RMSNorm, head_dim 128, GQA 16/8, tied)."""
    # Qwen/Qwen3-0.6B config.json: hidden 1024, intermediate 3072, 28 layers, 16 heads, 8 kv
    # heads, head_dim 128 (not 1024 / 16), per-head q/k RMSNorm, no attention bias, rope_theta
    # 1e6, max_position_embeddings 40960, rms_norm_eps 1e-6, tied, vocab 151,936.
    return _real_shape(
        "qwen3-0.6b", vocab=151936, lr=2.5e-4,
        d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128, d_ff=3072,
        max_seq_len=40960, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
    )  # fmt: skip


def llama3_2_1b() -> Config:
    """Llama-3.2-1B: 1,235,814,400 params (GQA 32/8, Llama 3 RoPE scaling, tied)."""
    # meta-llama/Llama-3.2-1B config.json: hidden 2048, intermediate 8192, 16 layers, 32 heads,
    # 8 kv heads (head_dim 64), rope_theta 5e5, rope_scaling llama3 (factor 32, low_freq_factor
    # 1, high_freq_factor 4, original_max_position_embeddings 8192: the last three are our
    # defaults), max_position_embeddings 131072, rms_norm_eps 1e-5, tied, vocab 128,256.
    return _real_shape(
        "llama3.2-1b", vocab=128256, lr=2e-4,
        d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, d_ff=8192, max_seq_len=131072,
        rope_theta=500_000.0, rope_scaling="llama3", rope_factor=32.0,
    )  # fmt: skip


def smollm3_3b() -> Config:
    """SmolLM3-3B: 3,075,098,624 params (NoPE every 4th layer, GQA 16/4, tied)."""
    # HuggingFaceTB/SmolLM3-3B config.json: hidden 2048, intermediate 11008, 36 layers, 16 heads,
    # 4 kv heads (head_dim 128), no_rope_layers: every 4th layer without RoPE (transformers'
    # rule for no_rope_layer_interval 4), rope_theta 5e6 and max_position_embeddings 65536
    # (the final 64k stage of the SmolLM3 blog; SmolLM3Config's defaults are 2e6 and 32768),
    # rms_norm_eps 1e-6, tied, vocab 128,256.
    return _real_shape(
        "smollm3-3b", vocab=128256, lr=1.6e-4,
        d_model=2048, n_layers=36, n_heads=16, n_kv_heads=4, d_ff=11008, max_seq_len=65536,
        rope_theta=5_000_000.0, norm_eps=1e-6,
        no_rope_layers=tuple(int((i + 1) % 4 != 0) for i in range(36)),
    )  # fmt: skip


def gemma3_270m() -> Config:
    """Gemma-3-270M: 268,098,176 params ((1 + w) norms, sandwich norms, GeGLU, √D embeddings,
    5 sliding-window layers : 1 global, MQA 4/1, head_dim 256, tied, vocab 262,144)."""
    # google/gemma-3-270m config.json (Gemma3ForCausalLM, gemma3_text): hidden 640, intermediate
    # 2048, 18 layers, 4 heads, 1 kv head, head_dim 256, query_pre_attn_scalar 256, sliding
    # window 512 on 5 of every 6 layers (layer_types), rope_theta 1e6 (global) and 1e4 (local),
    # max_position_embeddings 32768, rms_norm_eps 1e-6, gelu_pytorch_tanh, tied; vocab 262,144.
    return _real_shape(
        "gemma3-270m", vocab=262144, lr=6e-4,
        d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=2048,
        max_seq_len=32768, rope_theta=1_000_000.0, rope_local_theta=10_000.0, norm_eps=1e-6,
        qk_norm=True, norm_plus_one=True, sandwich_norms=True, mlp_activation="gelu_tanh",
        embed_scale=True, query_pre_attn_scalar=256.0, sliding_window=512,
        sliding_layers=tuple(int((i + 1) % 6 != 0) for i in range(18)),
    )  # fmt: skip


PRESETS: dict[str, Callable[[], Config]] = {
    "nano": nano,
    "tiny": tiny,
    "small": small,
    "base": base,
    "smollm2-135m": smollm2_135m,
    "smollm2-360m": smollm2_360m,
    "qwen2.5-0.5b": qwen2_5_0_5b,
    "qwen3-0.6b": qwen3_0_6b,
    "llama3.2-1b": llama3_2_1b,
    "smollm3-3b": smollm3_3b,
    "gemma3-270m": gemma3_270m,
}
# The presets at published shapes: their parameter counts are the published ones.
REAL_SHAPES: tuple[str, ...] = (
    "smollm2-135m",
    "smollm2-360m",
    "qwen2.5-0.5b",
    "qwen3-0.6b",
    "llama3.2-1b",
    "smollm3-3b",
    "gemma3-270m",
)


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# Overrides: `section.field=value`, parsed against the annotated field type.
# ---------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _parse_value(text: str, tp: Any, key: str) -> Any:
    """Parse `text` as a value of type `tp`; raise ConfigError naming the key and the valid form."""
    if tp is str:
        return text
    text = text.strip()
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == text or (
                isinstance(choice, bool) and text.lower() == str(choice).lower()
            ):
                return choice
        raise ConfigError(f"{key}={text!r} is not valid; choose one of: {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_value(text, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={text!r} is not valid; expected {_describe(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        items = [t for t in text.strip("()[]").split(",") if t.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(t.strip(), args[0], key) for t in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}={text!r}: expected {len(args)} comma-separated values")
        return tuple(_parse_value(t.strip(), a, key) for t, a in zip(items, args, strict=True))
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r} is not a bool; use true or false")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                as_float = float(text)  # accept 1e4 when it is integral
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"{key}={text!r} is not an int") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r} is not a float") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: fields of type {_describe(tp)} cannot be set from the command line")


def _valid_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for name in _field_types(type(cfg)):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            keys.extend(_valid_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _collect(cfg: Any, path: list[str], text: str, full_key: str, changes: dict) -> None:
    """Check `full_key` against cfg's fields and parse its value into `changes` (a nested dict
    by section: {"model": {"d_model": (96, "model.d_model=96")}}); nothing is built yet."""
    fields = _field_types(type(cfg))
    name = path[0]
    if name not in fields:
        scope = full_key[: len(full_key) - len(".".join(path))].rstrip(".")
        valid = _valid_keys(cfg, f"{scope}." if scope else "")
        raise ConfigError(f"unknown config key {full_key!r}; valid keys: {', '.join(valid)}")
    current = getattr(cfg, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise ConfigError(
                f"{full_key!r} is a section; set one of its fields: "
                + ", ".join(_valid_keys(current, f"{full_key}."))
            )
        _collect(current, path[1:], text, full_key, changes.setdefault(name, {}))
        return
    if len(path) > 1:
        raise ConfigError(f"unknown config key {full_key!r}: {name!r} has no sub-fields")
    changes[name] = (_parse_value(text, fields[name], full_key), f"{full_key}={text!r}")


def _replace_all(cfg: Any, changes: dict) -> Any:
    """cfg with every collected change, one `dataclasses.replace` per section: validation sees
    the final combination only, so the order of the overrides does not matter
    (`model.d_model=96 model.weight_format=nf4 model.quant_group_size=32` in any order)."""
    values, given = {}, []
    for name, change in changes.items():
        if isinstance(change, dict):
            values[name] = _replace_all(getattr(cfg, name), change)
        else:
            values[name], text = change
            given.append(text)
    try:
        return dataclasses.replace(cfg, **values)
    except (ValueError, TypeError) as e:  # the section's own __post_init__ validation
        raise ConfigError(f"{', '.join(given)}: {e}" if given else str(e)) from None


# Short spellings of nested sections: `adapter.rank=8` is `model.adapter.rank=8` (the adapter is
# part of the model's structure, but users think of it as its own section, as in PEFT).
ALIASES: dict[str, str] = {"adapter.": "model.adapter."}


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply `key.sub=value` strings (all at once: their order does not matter, a repeated key's
    last value wins), then `check_combined()` (module docstring)."""
    before, keys, changes = cfg, set(), {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, text = item.split("=", 1)
        for short, full in ALIASES.items():
            if key.strip().startswith(short):
                key = full + key.strip()[len(short) :]
        # The value is kept verbatim: a str field (a prompt) may need its spaces and newlines;
        # _parse_value strips it for every other type. A key given twice: the last wins.
        _collect(cfg, key.strip().split("."), text, key.strip(), changes)
        keys.add(key.strip())
    cfg = _replace_all(cfg, changes)
    if isinstance(cfg, Config) and "model.vocab_size" in keys:
        _check_vocab_override(before, cfg)
    check = getattr(cfg, "check_combined", None)
    try:
        if check is not None:
            check()
    except ValueError as e:  # an options class's own ValueError: the same one line
        raise ConfigError(str(e)) from None
    return cfg


def _check_vocab_override(before: Config, cfg: Config) -> None:
    """An explicit model.vocab_size must be the one the tokenizer gives: every command that
    builds a model sets it from the tokenizer (train/loop.py resolve_vocab), so any other value
    would be silently replaced. Only an hf tokenizer named on top of another is left unchecked
    (its vocabulary is in a run directory; info and pick take the value as given)."""
    from compactlm.data.dataset import configured_vocab_size, padded_vocab_size

    d, asked = cfg.data, cfg.model.vocab_size
    n = configured_vocab_size(d)
    if n is None and before.data.tokenizer != "hf":
        return
    valid = padded_vocab_size(n) if n is not None else before.model.vocab_size
    if asked != valid:
        source = {
            "byte": "259 byte-level ids",
            "bpe": f"data.bpe_vocab_size={d.bpe_vocab_size}",
            "hf": "the run's tokenizer.json",
        }[d.tokenizer]
        hint = "; set data.bpe_vocab_size instead" if d.tokenizer == "bpe" else ""
        raise ConfigError(
            f"model.vocab_size={asked} would be ignored: the vocabulary comes from the tokenizer "
            f"(data.tokenizer={d.tokenizer}: {source} -> model.vocab_size={valid}, padded to a "
            f"multiple of 64); valid: {valid}, or leave model.vocab_size out{hint}"
        )


def make_config(preset: str = "tiny", overrides: Sequence[str] = ()) -> Config:
    """The resolved config: a preset, then the overrides."""
    return apply_overrides(get_preset(preset), overrides)


# ---------------------------------------------------------------------------------------------
# Serialisation: config.json round trip.
# ---------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def _json_value(value: Any, tp: Any, key: str) -> Any:
    """A JSON value as a field of type `tp` (a tuple from a list; an int where a float goes),
    or ConfigError naming the key and the expected type: what _parse_value is for text."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if any(value == c and type(value) is type(c) for c in choices):
            return value
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _json_value(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} is not valid; expected {_describe(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} is not a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_json_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}={value!r}: expected a list of {len(args)} values")
        return tuple(_json_value(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, int, str) and type(value) is tp:  # type(): True is an int to isinstance
        return value
    article = "an" if _describe(tp)[0] in "aeiou" else "a"
    raise ConfigError(f"{key}={value!r} is not {article} {_describe(tp)}")


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    fields = _field_types(cls)
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise ConfigError(
            f"{prefix.rstrip('.') or 'the config'} is {kind.get(type(data), 'a number')}, not "
            f"an object with the keys {', '.join(prefix + f for f in fields)}"
        )
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config keys {[prefix + k for k in unknown]}; valid keys: "
            + ", ".join(prefix + f for f in fields)
        )
    kwargs = {}
    for name, value in data.items():
        tp = fields[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _json_value(value, tp, prefix + name)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the sub-config's own __post_init__ validation
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'}: {e}") from None


def from_json(text: str, *, source: str = "config.json") -> Config:
    """The Config of a config.json's text. Anything else (empty, not JSON, not an object, an
    unknown key, a wrong type, a value a sub-config refuses) raises a one-line ConfigError that
    starts with `source`: the file a user may have edited by hand."""
    if not text.strip():
        raise ConfigError(f"{source} is empty; a run's config.json holds its whole config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{source} is not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
        ) from None
    try:
        cfg = _from_dict(Config, data)
        cfg.check_combined()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Flattened `key: (a, b)` for every leaf field that differs."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        for f in dataclasses.fields(x):
            vx, vy = getattr(x, f.name), getattr(y, f.name)
            if dataclasses.is_dataclass(vx):
                walk(vx, vy, f"{prefix}{f.name}.")
            elif vx != vy:
                out[f"{prefix}{f.name}"] = (vx, vy)

    walk(a, b, "")
    return out
