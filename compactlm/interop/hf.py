"""Hugging Face Llama checkpoints in and out: config.json + *.safetensors + tokenizer.json.

Only JSON and safetensors are read or written: loading never executes code from a checkpoint
(no pickle, no `trust_remote_code`). Names and orientation are transformers' `LlamaForCausalLM`:
its weights are `[out, in]` (torch `nn.Linear`), ours `[in, out]` (Flax). compactlm's decoder
is exactly that architecture (rotate-half RoPE, GQA, SwiGLU, RMSNorm), so the mapping is a
transpose, except for the two fused projections, which split into HF's separate ones:

- `attn.qkv_proj.kernel [D, K·(G+2)·H]`, column `(k, j, h)`: query head `n = k·G + j` for
  `j < G`, key (`j = G`) and value (`j = G + 1`) of kv head k. Taking `j < G` in (k, j) order
  gives query columns in head order n, exactly `q_proj.weight.T`'s columns.
- `mlp.gate_up_proj.kernel [D, 2F]`: gate = columns `[0, F)`, up = `[F, 2F)`.

Tokenizers: a BPE run's tokenizer.json is its own (our specials appended at their ids); a byte
run gets a `tokenizers` BPE model whose vocabulary is the 256 GPT-2 byte characters at ids equal
to the byte values, no merges, then our specials — so transformers maps the same bytes to the
same ids. config.json keeps the whole compactlm config under "compactlm", so export → import
restores the run exactly; checkpoints without it get the defaults and a "hf" tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compactlm import interrupt
from compactlm.config import Config, ConfigError, apply_overrides, from_json, to_dict, to_json
from compactlm.data.tokenizer import chmod_as_umask

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
HF_TOKENIZER = "tokenizer.json"


class InteropError(ValueError):
    """A checkpoint or field compactlm cannot read or write; one line naming the field/tensor."""


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------


def llama_config(cfg: Config, tokenizer: Any) -> dict[str, Any]:
    """transformers' LlamaConfig fields for `cfg.model`, plus the compactlm config."""
    m = cfg.model
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": m.vocab_size,
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads,
        "head_dim": m.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": m.tie_embeddings,
        "initializer_range": m.init_std,
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
    if model_type != "llama":
        raise InteropError(
            f"config.json model_type={model_type!r} is not supported; valid: 'llama'"
        )
    archs = hf.get("architectures") or ["LlamaForCausalLM"]
    if archs != ["LlamaForCausalLM"]:
        raise InteropError(
            f"config.json architectures={archs} is not supported; valid: ['LlamaForCausalLM']"
        )
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise InteropError(f"config.json hidden_act={act!r} is not supported; valid: 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise InteropError(f"config.json {key}=true is not supported (compactlm has no biases)")
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


# ---------------------------------------------------------------------------------------------
# Tensors: our parameter tree <-> HF names, [in, out] <-> [out, in]
# ---------------------------------------------------------------------------------------------


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def split_qkv(w_DC: np.ndarray, n_heads: int, n_kv_heads: int, head_dim: int) -> dict:
    """Fused qkv kernel [D, K·(G+2)·H] → {"q": [D, N·H], "k": [D, K·H], "v": [D, K·H]}, through
    the model's own named views (models/linear.py), so export never re-derives the columns."""
    from compactlm.models.linear import qkv_layout

    parts = qkv_layout(n_heads, n_kv_heads, head_dim).split_columns(w_DC)
    return {name: np.asarray(w) for name, w in parts.items()}


def join_qkv(parts: Mapping[str, np.ndarray], n_heads: int, n_kv_heads: int, head_dim: int):
    """Inverse of split_qkv (Layout.join_columns)."""
    from compactlm.models.linear import qkv_layout

    return np.asarray(qkv_layout(n_heads, n_kv_heads, head_dim).join_columns(dict(parts)))


def split_gate_up(w_D2F: np.ndarray) -> dict:
    """Fused gate_up kernel [D, 2F] → {"gate": [D, F], "up": [D, F]} (Layout "halves")."""
    from compactlm.models.linear import halves

    parts = halves("gate", "up", w_D2F.shape[1] // 2).split_columns(w_D2F)
    return {name: np.asarray(w) for name, w in parts.items()}


# Per-layer parameters: our path inside a Block → HF name inside `model.layers.{i}.`
_NORMS = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
}
_LINEARS = {
    ("attn", "o_proj", "kernel"): "self_attn.o_proj.weight",
    ("mlp", "down_proj", "kernel"): "mlp.down_proj.weight",
}
_QKV = ("attn", "qkv_proj", "kernel")
_GATE_UP = ("mlp", "gate_up_proj", "kernel")
_QKV_HF = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
}
_GATE_UP_HF = {"gate": "mlp.gate_proj.weight", "up": "mlp.up_proj.weight"}


def _layer_arrays(params: Mapping, cfg) -> list[tuple[int, tuple, Any]]:
    """(layer index, path inside the block, array) for every per-layer parameter."""
    out = []
    for path, value in _flatten(params.get("layers", {})).items():
        if cfg.scan_layers:  # stacked [L, ...]
            out += [(i, path, value[i]) for i in range(cfg.n_layers)]
        else:
            out.append((int(path[0]), path[1:], value))
    return out


def _unknown(path: tuple) -> InteropError:
    name = "/".join(map(str, path))
    return InteropError(
        f"parameter {name} has no Hugging Face Llama counterpart (merge adapters / dequantize "
        "before exporting)"
    )


def to_hf_tensors(params: Mapping, cfg) -> dict[str, np.ndarray]:
    """Our parameter tree (nnx.to_pure_dict of the model's Params) → HF-named [out, in] arrays."""
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    out: dict[str, np.ndarray] = {}
    for path, value in _flatten({k: v for k, v in params.items() if k != "layers"}).items():
        w = np.asarray(value)
        if path == ("embedding",):
            out["model.embed_tokens.weight"] = w
        elif path == ("final_norm", "scale"):
            out["model.norm.weight"] = w
        elif path == ("lm_head", "kernel"):
            out["lm_head.weight"] = w.T
        else:
            raise _unknown(path)
    for i, path, value in _layer_arrays(params, cfg):
        w, pre = np.asarray(value), f"model.layers.{i}."
        if path in _NORMS:
            out[pre + _NORMS[path]] = w
        elif path in _LINEARS:
            out[pre + _LINEARS[path]] = w.T
        elif path == _QKV:
            for part, mat in split_qkv(w, N, K, H).items():
                out[pre + _QKV_HF[part]] = mat.T
        elif path == _GATE_UP:
            for part, mat in split_gate_up(w).items():
                out[pre + _GATE_UP_HF[part]] = mat.T
        else:
            raise _unknown(("layers", i, *path))
    return {name: np.ascontiguousarray(w) for name, w in out.items()}


def from_hf_tensors(tensors: Mapping[str, Any], template: Mapping, cfg) -> dict:
    """HF tensors → a parameter tree shaped like `template` (nnx.to_pure_dict of our Params).

    Every template leaf must be found with the right shape; every HF tensor must be used
    (rotary inv_freq buffers aside); otherwise a one-line error naming the tensor.
    """
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    used: set[str] = set()

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise InteropError(f"tensor {name} is missing from the checkpoint")
        w = np.asarray(tensors[name])
        if tuple(w.shape) != tuple(shape):
            raise InteropError(
                f"tensor {name} has shape {list(w.shape)}, config.json implies {list(shape)}"
            )
        used.add(name)
        return w

    D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size

    def layer(i: int, path: tuple) -> np.ndarray:
        pre = f"model.layers.{i}."
        if path in _NORMS:
            return get(pre + _NORMS[path], (D,))
        if path == ("attn", "o_proj", "kernel"):
            return get(pre + _LINEARS[path], (D, N * H)).T
        if path == ("mlp", "down_proj", "kernel"):
            return get(pre + _LINEARS[path], (D, F)).T
        if path == _QKV:
            rows = {"q": N * H, "k": K * H, "v": K * H}
            parts = {p: get(pre + _QKV_HF[p], (rows[p], D)).T for p in rows}
            return join_qkv(parts, N, K, H)
        if path == _GATE_UP:
            gate = get(pre + _GATE_UP_HF["gate"], (F, D))
            up = get(pre + _GATE_UP_HF["up"], (F, D))
            return np.concatenate([gate.T, up.T], axis=1)
        raise InteropError(f"compactlm parameter layers/{'/'.join(path)} has no HF source")

    flat_out: dict[tuple, np.ndarray] = {}
    for path, leaf in _flatten(template).items():
        dtype = np.dtype(leaf.dtype)
        if path == ("embedding",):
            w = get("model.embed_tokens.weight", (V, D))
        elif path == ("final_norm", "scale"):
            w = get("model.norm.weight", (D,))
        elif path == ("lm_head", "kernel"):
            w = get("lm_head.weight", (V, D)).T
        elif path[0] == "layers" and cfg.scan_layers:
            w = np.stack([layer(i, path[1:]) for i in range(cfg.n_layers)])
        elif path[0] == "layers":
            w = layer(int(path[1]), path[2:])
        else:
            raise InteropError(f"compactlm parameter {'/'.join(map(str, path))} has no HF source")
        flat_out[path] = np.asarray(w, dtype=dtype)

    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        if not np.array_equal(np.asarray(tensors["lm_head.weight"]), flat_out[("embedding",)]):
            raise InteropError(
                "tensor lm_head.weight differs from model.embed_tokens.weight but config.json "
                "says tie_word_embeddings=true"
            )
        used.add("lm_head.weight")
    for name in sorted(set(tensors) - used):
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a derived buffer some old checkpoints carry; recomputed from rope_theta
        if name.endswith(".bias"):
            raise InteropError(f"tensor {name} is a bias; compactlm's Llama has no biases")
        raise InteropError(f"tensor {name} is not part of a Llama model as config.json describes")
    return _unflatten(flat_out)


def read_safetensors(hf_dir: Path) -> dict[str, Any]:
    """All tensors of `hf_dir` (model.safetensors, or the shards its index.json lists)."""
    from safetensors import safe_open

    index = hf_dir / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InteropError(f"{index} is not a safetensors index (weight_map): {e}") from e
        files = sorted({hf_dir / f for f in weight_map.values()})
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(
            p.name for p in hf_dir.glob("*.pt*")
        )
        hint = f" (found {other}: pickle files are never loaded)" if other else ""
        raise InteropError(f"no *.safetensors weights in {hf_dir}{hint}")
    tensors: dict[str, Any] = {}
    for path in files:
        if not path.is_file():
            raise InteropError(f"{path.name} (listed in {HF_INDEX}) is missing")
        try:
            # framework="flax": numpy has no bfloat16; jax arrays (ml_dtypes) do.
            with safe_open(str(path), framework="flax") as f:
                for name in f.keys():
                    if name in tensors:
                        raise InteropError(f"tensor {name} appears in two files ({path.name})")
                    tensors[name] = np.asarray(f.get_tensor(name))
        except InteropError:
            raise
        except Exception as e:  # safetensors raises SafetensorError / OSError for bad files
            raise InteropError(f"{path} is not a readable safetensors file ({e})") from e
    return tensors


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the alphabet of `ByteLevel` pre-tokenizers)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def hf_tokenizer_json(tokenizer: Any) -> str:
    """tokenizer.json for transformers: the same ids for the same bytes as `tokenizer`."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from compactlm.data.tokenizer import SPECIAL_TOKENS

    if tokenizer.kind == "hf":
        return tokenizer.hf_json()
    if tokenizer.kind == "byte":
        vocab = {ch: b for b, ch in bytes_to_unicode().items()}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:  # bpe: our Hugging Face tokenizer, specials appended at n_base, n_base + 1, ...
        tok = HFTokenizer.from_str(tokenizer._tok.to_str())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ours = [tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id]  # SPECIAL_TOKENS' order
    theirs = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if theirs != ours:  # transformers must see our ids, or generation stops at the wrong token
        raise InteropError(f"special tokens would get ids {theirs} instead of {ours}")
    return tok.to_str()


def _strip_specials(hf_json: str) -> str:
    from compactlm.data.tokenizer import SPECIAL_TOKENS

    data = json.loads(hf_json)
    data["added_tokens"] = [
        t for t in data.get("added_tokens", []) if t.get("content") not in SPECIAL_TOKENS
    ]
    return json.dumps(data)


def tokenizer_from_hf(hf_dir: Path, hf: Mapping[str, Any], cfg: Config) -> Any:
    """The compactlm tokenizer of an HF directory: ours back exactly, else an HfTokenizer."""
    from tokenizers import Tokenizer as HFTokenizer

    from compactlm.data.tokenizer import BpeTokenizer, ByteTokenizer, HfTokenizer

    path = hf_dir / HF_TOKENIZER
    if not path.is_file():
        extra = " (tokenizer.model / sentencepiece files need converting to tokenizer.json)"
        raise InteropError(
            f"no {HF_TOKENIZER} in {hf_dir}{extra if (hf_dir / 'tokenizer.model').exists() else ''}"
        )
    try:
        text = path.read_text(encoding="utf-8")
        hf_tok = HFTokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise InteropError(f"{path} is not a readable tokenizer.json ({e})") from e
    kind = (hf.get("compactlm") or {}).get("tokenizer")
    if kind == "byte" and cfg.data.tokenizer == "byte":
        probe = "héllo\t€\n"
        if hf_tok.encode(probe, add_special_tokens=False).ids != list(probe.encode("utf-8")):
            raise InteropError(f"{path} does not map bytes to ids 0..255 (a byte-level run's)")
        return ByteTokenizer()
    if kind == "bpe" and cfg.data.tokenizer == "bpe":
        return BpeTokenizer(HFTokenizer.from_str(_strip_specials(text)), cfg.data.bpe_vocab_size)

    def token_id(key: str, fallback: int | None) -> int:
        value = hf.get(key)
        if isinstance(value, list):  # Llama 3 instruct lists several eos ids; the first ends text
            value = value[0] if value else None
        if value is None:
            if fallback is None:
                raise InteropError(f"config.json has no {key} (needed to end sequences)")
            return fallback
        return int(value)

    eos = token_id("eos_token_id", None)
    try:
        return HfTokenizer(
            hf_tok,
            vocab_size=cfg.model.vocab_size,
            eos_id=eos,
            bos_id=token_id("bos_token_id", eos),
            pad_id=token_id("pad_token_id", eos),
        )
    except Exception as e:
        raise InteropError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------


def _one_device() -> Any:
    """Export and import run on one device: a run trained on N devices reads anywhere."""
    from compactlm.train.mesh import MeshConfig, make_mesh

    return make_mesh(MeshConfig(devices=1))


def load_run_params(run_dir: str | os.PathLike) -> tuple[Config, Any, dict, int]:
    """(config, tokenizer, parameter tree, step) of a run's latest checkpoint; writes nothing.

    The corpus is not needed: only config.json, tokenizer.json and the checkpoint are read.
    """
    from flax import nnx

    from compactlm.data import load_tokenizer
    from compactlm.train import checkpoint as ckpt
    from compactlm.train.finetune import read_base
    from compactlm.train.loop import program_and_state, resolve_vocab
    from compactlm.train.run_dir import read_config

    run = Path(run_dir)
    cfg = read_config(run)
    tokenizer = load_tokenizer(run)
    cfg = resolve_vocab(cfg, tokenizer.vocab_size)
    if not (run / "checkpoints").is_dir():
        raise ckpt.CheckpointError(f"no checkpoint found in {run / 'checkpoints'}")
    program, state = program_and_state(cfg, run, base=read_base(run), mesh=_one_device())
    model = program.model(state)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # Packed (quantized / 2:4) storage lives in non-Param variables: exporting only the Params
    # would silently drop those layers. Refuse, naming the way to a dense run.
    extra = sorted(set(_flatten(nnx.to_pure_dict(nnx.state(model)))) - set(_flatten(params)))
    if extra:
        name = "/".join(map(str, extra[0]))
        raise InteropError(
            f"{run_dir} stores {name} (compressed or adapter weights), which a Hugging Face "
            f"Llama has no place for; run `compactlm merge {run_dir} workdir=MERGED "
            "dequantize=true` and export MERGED"
        )
    return cfg, tokenizer, params, int(state.step)


def _fresh_dir(out_dir: Path) -> Path:
    """A temporary sibling of out_dir, renamed into place when complete (never a half export)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InteropError(f"{out_dir} already exists and is not empty; choose a new workdir")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    chmod_as_umask(tmp)  # mkdtemp's 0700 would make the export (or imported run) private
    return tmp


def _commit(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by _fresh_dir)
    os.replace(tmp, out_dir)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write `out_dir` as a Hugging Face Llama directory; returns a summary."""
    from safetensors.numpy import save_file

    cfg, tokenizer, params, step = load_run_params(run_dir)
    tensors = to_hf_tensors(params, cfg.model)
    interrupt.check("stopped before the export was written")  # safe points: here, and the rename
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    try:
        hf_config = llama_config(cfg, tokenizer)
        _write_json(tmp / HF_CONFIG, hf_config)
        save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        chmod_as_umask(tmp / HF_WEIGHTS)  # safetensors creates it 0600
        (tmp / HF_TOKENIZER).write_text(hf_tokenizer_json(tokenizer))
        ids = {f"{n}_token_id": getattr(tokenizer, f"{n}_id") for n in ("bos", "eos", "pad")}
        _write_json(tmp / "generation_config.json", ids)
        names = {}
        if tokenizer.kind != "hf":
            from compactlm.data.tokenizer import SPECIAL_TOKENS

            names = dict(zip(("eos_token", "pad_token", "bos_token"), SPECIAL_TOKENS, strict=True))
        _write_json(
            tmp / "tokenizer_config.json",
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": cfg.model.max_seq_len,
                "clean_up_tokenization_spaces": False,
                **names,
            },
        )
        interrupt.check("stopped before the export was moved into place")
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(w.shape)) for w in tensors.values())
    return {"step": step, "tensors": len(tensors), "parameters": n_params, "out": str(out)}


def import_hf(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Make `out_dir` a compactlm run directory (step-0 checkpoint) from a Llama HF directory."""
    import jax
    from flax import nnx

    from compactlm.train import checkpoint as ckpt
    from compactlm.train.loop import make_program
    from compactlm.train.step import init_state

    src = Path(hf_dir)
    if not (src / HF_CONFIG).is_file():
        raise FileNotFoundError(f"{src / HF_CONFIG} not found: is {str(hf_dir)!r} a HF model dir?")
    try:
        hf = json.loads((src / HF_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise InteropError(f"{src / HF_CONFIG} is not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise InteropError(f"{src / HF_CONFIG} is not a JSON object")
    cfg = config_from_llama(hf, overrides)
    tokenizer = tokenizer_from_hf(src, hf, cfg)
    from compactlm.data import load_corpus

    d = cfg.data  # eval / finetune will read it: a wrong data.corpus fails now, not later
    load_corpus(d.corpus, glob=d.glob, jsonl_field=d.jsonl_field, max_corpus_bytes=1 << 16)
    tensors = read_safetensors(src)
    out = Path(out_dir)
    tmp = _fresh_dir(out)
    try:
        program = make_program(cfg, mesh=_one_device())
        state = init_state(program, cfg.model, seed=cfg.train.seed)
        template = nnx.to_pure_dict(state.params)
        loaded = from_hf_tensors(tensors, template, cfg.model)
        shardings = nnx.to_pure_dict(program.state_sharding.params)
        placed = jax.tree.map(jax.device_put, loaded, shardings)
        nnx.replace_by_pure_dict(state.params, placed)
        tokenizer.save(tmp)
        (tmp / "config.json").write_text(to_json(cfg) + "\n")
        manager = ckpt.make_manager(tmp, max_to_keep=cfg.train.keep_checkpoints)
        meta = {"step": 0, "seed": cfg.train.seed, "time": time.time(), "metrics": {}}
        ckpt.save(manager, 0, state, {**meta, "imported_from": str(src.absolute())}, to_dict(cfg))
        manager.close()
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_params = sum(int(np.prod(w.shape)) for w in jax.tree.leaves(loaded))
    return {"tensors": len(tensors), "parameters": n_params, "out": str(out), "config": cfg}


__all__: list[str] = [
    "InteropError",
    "config_from_llama",
    "export_hf",
    "from_hf_tensors",
    "hf_tokenizer_json",
    "import_hf",
    "llama_config",
    "load_run_params",
    "read_safetensors",
    "split_qkv",
    "to_hf_tensors",
]
