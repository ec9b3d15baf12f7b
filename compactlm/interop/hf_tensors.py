"""Tensors: our parameter tree <-> Hugging Face names, [in, out] <-> [out, in], fused q/k/v and
gate/up split and joined (the layout is in interop/hf.py's docstring)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from compactlm.interop.hf_config import InteropError


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
    """Fused gate_up kernel [D, 2F] → {"gate": [D, F], "up": [D, F]} (Layout "halves"; its
    bias [2F] the same way)."""
    from compactlm.models.linear import halves

    parts = halves("gate", "up", w_D2F.shape[-1] // 2).split_columns(w_D2F)
    return {name: np.asarray(w) for name, w in parts.items()}


# Per-layer parameters: our path inside a Block → HF name inside `model.layers.{i}.`
_NORMS = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("mlp_norm", "scale"): "post_attention_layernorm.weight",
}
# Gemma's sandwich norms: transformers' post_attention_layernorm is the attention OUTPUT's norm
# there, the MLP's input norm is pre_feedforward_layernorm.
_SANDWICH_NORMS = {
    ("attn_norm", "scale"): "input_layernorm.weight",
    ("attn_post_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp_norm", "scale"): "pre_feedforward_layernorm.weight",
    ("mlp_post_norm", "scale"): "post_feedforward_layernorm.weight",
}


def _norms(cfg) -> dict[tuple, str]:
    return _SANDWICH_NORMS if cfg.sandwich_norms else _NORMS


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
# Qwen2: q/k/v biases, one vector in the fused qkv column layout (split / joined as the kernel).
_QKV_BIAS = ("attn", "qkv_bias")
_QKV_BIAS_HF = {p: f"self_attn.{p}_proj.bias" for p in ("q", "k", "v")}
# Llama's attention_bias (o's; q/k/v's are _QKV_BIAS) and mlp_bias (gate / up in the fused
# gate_up column layout, down).
_BIASES = {
    ("attn", "o_bias"): "self_attn.o_proj.bias",
    ("mlp", "down_bias"): "mlp.down_proj.bias",
}
_GATE_UP_BIAS = ("mlp", "gate_up_bias")
_GATE_UP_BIAS_HF = {"gate": "mlp.gate_proj.bias", "up": "mlp.up_proj.bias"}
# Qwen3: per-head q / k RMSNorm scales [H].
_QK_NORMS = {
    ("attn", "q_norm", "scale"): "self_attn.q_norm.weight",
    ("attn", "k_norm", "scale"): "self_attn.k_norm.weight",
}


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
        f"parameter {name} has no Hugging Face counterpart (merge adapters / dequantize "
        "before exporting)"
    )


def to_hf_tensors(params: Mapping, cfg) -> dict[str, np.ndarray]:
    """Our parameter tree (nnx.to_pure_dict of the model's Params) → HF-named [out, in] arrays;
    the vocabulary at the checkpoint's own size (cfg.vocab_valid rows, the padding dropped)."""
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    V = cfg.vocab_valid or cfg.vocab_size
    out: dict[str, np.ndarray] = {}
    for path, value in _flatten({k: v for k, v in params.items() if k != "layers"}).items():
        w = np.asarray(value)
        if path == ("embedding",):
            out["model.embed_tokens.weight"] = w[:V]
        elif path == ("final_norm", "scale"):
            out["model.norm.weight"] = w
        elif path == ("lm_head", "kernel"):
            out["lm_head.weight"] = w[:, :V].T
        else:
            raise _unknown(path)
    norms = _norms(cfg)
    for i, path, value in _layer_arrays(params, cfg):
        w, pre = np.asarray(value), f"model.layers.{i}."
        if path in norms:
            out[pre + norms[path]] = w
        elif path in _LINEARS:
            out[pre + _LINEARS[path]] = w.T
        elif path == _QKV:
            for part, mat in split_qkv(w, N, K, H).items():
                out[pre + _QKV_HF[part]] = mat.T
        elif path == _GATE_UP:
            for part, mat in split_gate_up(w).items():
                out[pre + _GATE_UP_HF[part]] = mat.T
        elif path == _QKV_BIAS:
            for part, vec in split_qkv(w, N, K, H).items():
                out[pre + _QKV_BIAS_HF[part]] = vec
        elif path in _QK_NORMS:
            out[pre + _QK_NORMS[path]] = w
        elif path in _BIASES:
            out[pre + _BIASES[path]] = w
        elif path == _GATE_UP_BIAS:
            for part, vec in split_gate_up(w).items():
                out[pre + _GATE_UP_BIAS_HF[part]] = vec
        else:
            raise _unknown(("layers", i, *path))
    return {name: np.ascontiguousarray(w) for name, w in out.items()}


# Where a multimodal checkpoint keeps its text tower (transformers 5 saves Gemma 3 under the
# first, as the Hub's checkpoints; its in-memory module names are the second), and the towers
# the text model does not use.
_TEXT_TOWER_PREFIXES = ("language_model.model.", "model.language_model.")
_OTHER_TOWERS = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.")
_OTHER_TOWERS += ("model.multi_modal_projector.",)


def text_tower_tensors(tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    """A multimodal checkpoint's text tower under the text-only names (`model.…`, `lm_head…`),
    its vision tower and projector left out; a text checkpoint as it is. No tensor is copied."""
    if "model.embed_tokens.weight" in tensors:
        return tensors
    for prefix in _TEXT_TOWER_PREFIXES:
        if prefix + "embed_tokens.weight" in tensors:
            break
    else:
        return tensors
    out = {}
    for name, w in tensors.items():
        if name.startswith(prefix):
            out["model." + name.removeprefix(prefix)] = w
        elif name in ("language_model.lm_head.weight", "lm_head.weight"):
            out["lm_head.weight"] = w
        elif not name.startswith(_OTHER_TOWERS):
            out[name] = w  # unknown: from_hf_tensors names it
    return out


def from_hf_tensors(tensors: Mapping[str, Any], template: Mapping, cfg) -> dict:
    """HF tensors → a parameter tree shaped like `template` (nnx.to_pure_dict of our Params).

    Every template leaf must be found with the right shape; every HF tensor must be used
    (rotary inv_freq buffers aside); otherwise a one-line error naming the tensor.
    """
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    tensors = text_tower_tensors(tensors)
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

    D, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_valid or cfg.vocab_size

    def padded(w: np.ndarray) -> np.ndarray:
        """Zero rows up to the padded vocab_size (masked: ModelConfig.vocab_valid); no copy
        when the vocabulary needs none."""
        return np.pad(w, ((0, cfg.vocab_size - V), (0, 0))) if cfg.vocab_size > V else w

    norms = _norms(cfg)

    def layer(i: int, path: tuple) -> np.ndarray:
        pre = f"model.layers.{i}."
        if path in norms:
            return get(pre + norms[path], (D,))
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
        if path == _QKV_BIAS:
            rows = {"q": N * H, "k": K * H, "v": K * H}
            return join_qkv({p: get(pre + _QKV_BIAS_HF[p], (rows[p],)) for p in rows}, N, K, H)
        if path in _QK_NORMS:
            return get(pre + _QK_NORMS[path], (H,))
        if path in _BIASES:
            return get(pre + _BIASES[path], (D,))
        if path == _GATE_UP_BIAS:
            return np.concatenate([get(pre + _GATE_UP_BIAS_HF[p], (F,)) for p in ("gate", "up")])
        raise InteropError(f"compactlm parameter layers/{'/'.join(path)} has no HF source")

    flat_out: dict[tuple, np.ndarray] = {}
    for path, leaf in _flatten(template).items():
        dtype = np.dtype(leaf.dtype)
        if path == ("embedding",):
            w = padded(get("model.embed_tokens.weight", (V, D)))
        elif path == ("final_norm", "scale"):
            w = get("model.norm.weight", (D,))
        elif path == ("lm_head", "kernel"):
            w = padded(get("lm_head.weight", (V, D))).T
        elif path[0] == "layers" and cfg.scan_layers:  # [L, ...], filled layer by layer: one
            # layer's arrays at a time beside it, not all of them and their stack
            w = np.empty((cfg.n_layers, *leaf.shape[1:]), dtype)
            for i in range(cfg.n_layers):
                w[i] = layer(i, path[1:])
        elif path[0] == "layers":
            w = layer(int(path[1]), path[2:])
        else:
            raise InteropError(f"compactlm parameter {'/'.join(map(str, path))} has no HF source")
        flat_out[path] = np.asarray(w, dtype=dtype)

    if cfg.tie_embeddings and "lm_head.weight" in tensors:
        embedding = flat_out[("embedding",)][:V]
        if not np.array_equal(np.asarray(tensors["lm_head.weight"]), embedding):
            raise InteropError(
                "tensor lm_head.weight differs from model.embed_tokens.weight but config.json "
                "says tie_word_embeddings=true"
            )
        used.add("lm_head.weight")
    for name in sorted(set(tensors) - used):
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a derived buffer some old checkpoints carry; recomputed from rope_theta
        if name.endswith(".bias"):
            raise InteropError(
                f"tensor {name} is a bias; this model has none there as config.json describes"
                " (q/k/v biases: a qwen2 config; q/k/v/o: attention_bias=true; gate/up/down: "
                "mlp_bias=true)"
            )
        raise InteropError(
            f"tensor {name} is not part of the model config.json (with the command's model.* "
            "overrides, if any) describes"
        )
    return _unflatten(flat_out)
