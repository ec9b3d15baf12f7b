"""GGUF export for llama.cpp: a run's weights, as it holds them, in the `gguf` package's container.

`compactlm export RUN_DIR format=gguf type=auto workdir=OUT` writes `OUT/model.gguf`. The
container, metadata keys and tensor names are gguf-py's (llama.cpp's own writer: `gguf.Keys`,
`gguf.TensorNameMap`); the block bytes are ours (interop/gguf_blocks.py). DESIGN §7: a type is
chosen so the codes are not rounded again, and every lossy step prints its measured error.

type=auto, per block linear (our `[K, N]` storage becomes GGUF's `[N, K]`, blocks along K):

| our storage (kernels/packing.py)  | GGUF      | exact when                                 |
|-----------------------------------|-----------|--------------------------------------------|
| dense                             | run dtype | always (F32, or BF16 bit for bit)          |
| int4 symmetric, G % 32 == 0       | Q4_0      | every s is an f16 (d = s, nibble = q + 8)  |
| int4 affine (zero points)         | Q4_1      | s and −s·z are f16 (d = s, m = −s·z)       |
| nf4 / fp4 (code books)            | Q8_0      | never (no GGUF code book): error and the   |
|                                   |           | eval loss of the file's weights printed    |
| sparse24 / sparse24_int4          | run dtype | f32 runs: always (zeros stored as zeros)   |

A group of 64 / 128 / 256 / K repeats its scale over its 32-blocks. Forced types (f32, f16,
bf16, q8_0, q4_0, q4_1) dequantize and convert (or keep the codes where auto would) and report
the error against our f32 dequantized weight. Embeddings, the head and norms stay in the run's
dtype (norms and biases F32). Architectures: llama (q / k rows permuted to llama.cpp's
interleaved RoPE pairs, convert_hf_to_gguf's `LlamaModel.permute`), qwen2 and qwen3 (NEOX RoPE,
no permutation), smollm3 and gemma3 (interop/gguf_arch.py: what each needs and refuses).
Adapter runs are merged first (`compactlm merge`'s fold), or with adapter=separate written
unmerged beside a GGUF LoRA adapter (interop/gguf_lora.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

import numpy as np

from compactlm import interrupt
from compactlm.interop import gguf_arch
from compactlm.interop import gguf_blocks as gb
from compactlm.interop.hf_config import InteropError, family_of
from compactlm.interop.hf_tensors import _flatten, split_gate_up, split_qkv, to_hf_tensors

GGUF_FILE = "model.gguf"
GGUF_TYPES: tuple[str, ...] = ("auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
# compactlm family → llama.cpp architecture, and what each needs: interop/gguf_arch.py
ARCHITECTURES = gguf_arch.ARCHITECTURES


@dataclasses.dataclass(frozen=True, kw_only=True)
class GGUFExportConfig:
    """Options of `compactlm export RUN_DIR format=gguf [type=...] workdir=OUT`."""

    # Target format: "gguf" here (format=hf is commands.ExportConfig's).
    format: typing.Literal["hf", "gguf", "compressed-tensors"] = "gguf"
    # GGUF type of the block linears. auto: the type that holds the run's codes without rounding
    # them again (table in the module docstring); the others convert and print their error.
    type: typing.Literal["auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"] = "auto"
    # Adapter runs: "merged" folds the adapters into the base first (as `compactlm merge`);
    # "separate" writes the base unmerged and adapter.gguf, a GGUF LoRA for llama.cpp's --lora
    # (interop/gguf_lora.py; LoRA / rsLoRA / PiSSA, not DoRA).
    adapter: typing.Literal["merged", "separate"] = "merged"
    # Validation tokens scored (twice: the run, the file's weights) when a block linear is
    # requantized, to print what that does to the eval loss; 0 = not measured (printed so).
    # 32768: all of a small corpus' validation split (pydocs: 12,330), a bounded cost otherwise.
    eval_tokens: int = 32768

    def __post_init__(self) -> None:
        if self.eval_tokens < 0:
            raise ValueError(f"eval_tokens={self.eval_tokens}; valid: 0 (not measured) or more")


# ---------------------------------------------------------------------------------------------
# Weights in our orientation: dense [K, N] or packed arrays [·, N]; split / permuted by columns
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Packed:
    """One packed linear's arrays (`qweight`, `scales`, `zeros`, ...), every one [rows, N]."""

    fmt: str  # int4 | nf4 | fp4 | sparse24 | sparse24_int4
    arrays: dict[str, np.ndarray]
    group: int  # rows of K per scale (int4 / nf4 / fp4)

    def columns(self, fn) -> Packed:
        return Packed(self.fmt, {k: fn(v) for k, v in self.arrays.items()}, self.group)

    def dequantize(self) -> np.ndarray:
        """Our f32 [K, N]: exactly what the model computes with (kernels/packing.py)."""
        from compactlm.kernels import packing

        a = self.arrays
        if self.fmt == "int4":
            w = packing.dequantize_int4(a["qweight"], a["scales"], a.get("zeros"))
        elif self.fmt in ("nf4", "fp4"):
            scales = a.get("scales")
            if scales is None:  # double-quantized absmax (QLoRA §3)
                dq = packing.DoubleQuantized(
                    a["absmax_codes"], a["absmax_scales"], a["absmax_mean"]
                )
                scales = packing.double_dequantize(dq)
            w = packing.dequantize_codebook(a["qweight"], scales, self.fmt)
        elif self.fmt == "sparse24":
            w = packing.decompress_24(a["values"], a["meta"]).astype(np.float32)
        else:
            w = packing.dequantize_sparse24_int4(
                a["qvalues"], a["meta"], a["scales"], a.get("zeros")
            )
        return np.asarray(w, np.float32)


# ---------------------------------------------------------------------------------------------
# Encoding one matrix
# ---------------------------------------------------------------------------------------------


def _requantize(w_NK: np.ndarray, t: str) -> tuple[np.ndarray, Any, np.ndarray]:
    from gguf import GGMLQuantizationType as Q

    if t == "q8_0":
        q, d = gb.quantize_q8_0(w_NK)
        return gb.pack_q8_0(q, d), Q.Q8_0, gb.value_q8_0(q, d)
    if t == "q4_0":
        q, d = gb.quantize_q4_0(w_NK)
        return gb.pack_q4_0(q, d), Q.Q4_0, gb.value_q4_0(q, d)
    q, d, m = gb.quantize_q4_1(w_NK)
    return gb.pack_q4_1(q, d, m), Q.Q4_1, gb.value_q4_1(q, d, m)


def _scales_per_block(s_GN: np.ndarray, group: int) -> np.ndarray:
    """scales [K/G, N] → one per 32-block, GGUF's [N, K/32] (a group repeats over its blocks)."""
    return np.repeat(np.asarray(s_GN, np.float32), group // gb.QK, axis=0).T


def _int4_codes_kept(p: Packed, t: str) -> tuple[np.ndarray, Any, np.ndarray, int] | None:
    """int4 → Q4_0 (symmetric) or Q4_1 (affine) with the codes as they are; None if `t` or the
    group size does not allow it."""
    from gguf import GGMLQuantizationType as Q

    from compactlm.kernels import packing

    affine = "zeros" in p.arrays
    if p.fmt != "int4" or p.group % gb.QK or t != ("q4_1" if affine else "q4_0"):
        return None
    codes = np.asarray(packing.unpack_int4(p.arrays["qweight"], signed=not affine)).T
    s = _scales_per_block(p.arrays["scales"], p.group)
    d = _f16(s)
    if not affine:
        inexact = int(np.sum(d.astype(np.float32) != s))
        return gb.pack_q4_0(codes, d), Q.Q4_0, gb.value_q4_0(codes, d), inexact
    offset = -s * _scales_per_block(p.arrays["zeros"], p.group)  # m = −s·z (exact in f32)
    m = _f16(offset)
    inexact = int(np.sum((d.astype(np.float32) != s) | (m.astype(np.float32) != offset)))
    return gb.pack_q4_1(codes, d, m), Q.Q4_1, gb.value_q4_1(codes, d, m), inexact


def _f16(a: np.ndarray) -> np.ndarray:
    if np.any(np.abs(a) > np.finfo(np.float16).max):
        raise InteropError("a scale exceeds float16's range (65504): no GGUF block type holds it")
    return a.astype(np.float16)


def auto_type(p: Packed | None, run_dtype: str) -> str:
    """type=auto's choice for one block linear (the module docstring's table)."""
    dense = "f32" if run_dtype == "float32" else "bf16"
    if p is None or p.fmt in ("sparse24", "sparse24_int4"):
        return dense
    if p.fmt == "int4" and p.group % gb.QK == 0:
        return "q4_1" if "zeros" in p.arrays else "q4_0"
    return "q8_0"  # nf4 / fp4; int4 whose groups are not whole 32-blocks


def encode_linear(name: str, w: np.ndarray | Packed, t: str) -> tuple[np.ndarray, Any, gb.Written]:
    """One block linear, [K, N] dense or packed, as GGUF type `t` in GGUF's [N, K] orientation:
    (array for add_tensor, raw_dtype or None, what was done)."""
    ggml = t.upper()
    if isinstance(w, Packed):
        kept = _int4_codes_kept(w, t)
        exact = w.dequantize().T
        if kept is not None:
            data, raw, value, inexact = kept
            err = float(np.max(np.abs(value - exact), initial=0.0))
            return data, raw, gb.Written(name, ggml, "codes kept", err, inexact)
    else:
        exact = np.asarray(w).T
    if t in ("f32", "f16", "bf16"):
        data, raw = gb.float_tensor(exact, t)
        err = float(
            np.max(np.abs(gb.float_value(exact, t) - np.asarray(exact, np.float32)), initial=0)
        )
        how = "dense" if isinstance(w, Packed) else ("as stored" if err == 0 else "converted")
        return data, raw, gb.Written(name, ggml, how, err)
    if exact.shape[1] % gb.QK:
        raise InteropError(
            f"{name}: rows of {exact.shape[1]} weights are not whole {gb.QK}-blocks; type={t} "
            "needs in_features % 32 == 0 (use type=f32 / f16 / bf16)"
        )
    data, raw, value = _requantize(exact, t)
    err = float(np.max(np.abs(value - np.asarray(exact, np.float32)), initial=0.0))
    return data, raw, gb.Written(name, ggml, "requantized", err)


# ---------------------------------------------------------------------------------------------
# The model's tensors under HF names, then GGUF names
# ---------------------------------------------------------------------------------------------

_PACKED_SITES = {
    ("attn", "qkv_proj"): "qkv",
    ("mlp", "gate_up_proj"): "gate_up",
    ("attn", "o_proj"): "self_attn.o_proj.weight",
    ("mlp", "down_proj"): "mlp.down_proj.weight",
}


def _packed_linears(state: dict, params: dict, cfg) -> dict[str, Packed]:
    """HF weight name → Packed for every block linear held in packed storage."""
    m = cfg
    extra = {p: v for p, v in _flatten(state).items() if p not in _flatten(params)}
    per_linear: dict[tuple[int, tuple], dict[str, np.ndarray]] = {}
    for path, value in extra.items():
        if path[0] != "layers":
            raise InteropError(f"{'/'.join(map(str, path))} has no GGUF counterpart")
        v = np.asarray(value)
        layers = range(m.n_layers) if m.scan_layers else [int(path[1])]
        rest = path[1:] if m.scan_layers else path[2:]
        for i in layers:
            arr = v[i] if m.scan_layers else v
            per_linear.setdefault((i, rest[:-1]), {})[rest[-1]] = arr
    out: dict[str, Packed] = {}
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim
    for (i, site), arrays in per_linear.items():
        if site not in _PACKED_SITES:
            raise InteropError(f"layers/{i}/{'/'.join(site)} has no GGUF counterpart")
        k_in = m.d_ff if site == ("mlp", "down_proj") else m.d_model
        group = m.quant_group_size or k_in
        p = Packed(m.weight_format, arrays, group)
        pre, what = f"model.layers.{i}.", _PACKED_SITES[site]
        if what == "qkv":
            parts = {x: p.columns(lambda a, x=x: split_qkv(a, N, K, H)[x]) for x in "qkv"}
            out |= {f"{pre}self_attn.{x}_proj.weight": q for x, q in parts.items()}
        elif what == "gate_up":
            for x in ("gate", "up"):
                out[f"{pre}mlp.{x}_proj.weight"] = p.columns(lambda a, x=x: split_gate_up(a)[x])
        else:
            out[pre + what] = p
    return out


def _check_config(cfg) -> str:
    """Refuse, from config.json alone, what llama.cpp's architectures cannot compute."""
    m = cfg.model
    family = family_of(m)
    arch = ARCHITECTURES.get(family.model_type)
    if arch is None:
        raise InteropError(
            f"a {family.model_type} model has no GGUF writer here yet; valid families: "
            + ", ".join(ARCHITECTURES)
        )
    if m.rope_scaling == "llama3" and arch != "llama":
        raise InteropError(f"llama3 RoPE scaling is written for the llama architecture, not {arch}")
    gguf_arch.check(m, arch)
    return arch


def _tokenizer(writer, tokenizer, n_vocab: int) -> int:
    """tokenizer.ggml.* of a byte-level BPE tokenizer ("gpt2"); returns the number of tokens."""
    import gguf

    from compactlm.interop.hf_tokenizer import hf_tokenizer_json

    data = json.loads(hf_tokenizer_json(tokenizer))
    model = data["model"]
    if model.get("type") != "BPE":
        raise InteropError(f"tokenizer model {model.get('type')!r}: GGUF export writes BPE only")
    tokens: list[str | None] = [None] * n_vocab
    types = [gguf.TokenType.NORMAL] * n_vocab
    for tok, i in model["vocab"].items():
        if i < n_vocab:
            tokens[i] = tok
    for added in data.get("added_tokens", []):
        i = added["id"]
        if i >= n_vocab:
            raise InteropError(f"token {added['content']!r} has id {i} ≥ the vocabulary {n_vocab}")
        tokens[i] = added["content"]
        special = added.get("special", False)
        types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    for i, tok in enumerate(tokens):
        if tok is None:  # ids of the padded embedding no text maps to
            tokens[i], types[i] = f"[PAD{i}]", gguf.TokenType.UNUSED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        # A byte-level vocabulary without merges (compactlm's byte runs). llama.cpp's gpt2 vocab
        # refuses a file without tokenizer.ggml.merges ("cannot find tokenizer merges", checked
        # with llama-cpp-python 0.3.36) and gguf-py writes no empty array: one merge of two
        # special tokens, which never applies (specials are split off before BPE, and no merge
        # builds them from characters), so every byte stays its own id.
        specials = [a["content"] for a in data.get("added_tokens", []) if a.get("special")]
        if len(specials) < 2:
            raise InteropError("a tokenizer without merges needs two special tokens for GGUF")
        merges = [f"{specials[0]} {specials[1]}"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(False)  # compactlm's prompts carry no BOS (generate, eval)
    return n_vocab


def _metadata(writer, cfg, arch: str, n_vocab: int, name: str) -> None:
    import gguf

    m = cfg.model
    H = m.resolved_head_dim
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(m.max_seq_len)
    writer.add_embedding_length(m.d_model)
    writer.add_block_count(m.n_layers)
    writer.add_feed_forward_length(m.d_ff)
    writer.add_head_count(m.n_heads)
    writer.add_head_count_kv(m.n_kv_heads)
    writer.add_key_length(H)
    writer.add_value_length(H)
    writer.add_rope_dimension_count(H)
    writer.add_rope_freq_base(m.rope_theta)
    writer.add_layer_norm_rms_eps(m.norm_eps)
    writer.add_vocab_size(n_vocab)
    if m.rope_scaling == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(m.rope_factor)
    gguf_arch.metadata(writer, m, arch)


def rope_freqs(m) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight` for llama3 scaling: the factor each frequency is divided
    by, i.e. plain RoPE's frequencies over ours (models/layers.py rope_inv_freq, THE rule)."""
    from compactlm.models.layers import rope_inv_freq

    H = m.resolved_head_dim
    plain = np.asarray(rope_inv_freq(H, m.rope_theta), np.float32)
    return plain / np.asarray(rope_inv_freq(H, m.rope_theta, m), np.float32)


def _load(run_dir: str):
    """(config, tokenizer, all state, Params, step, merged?) of the run's latest checkpoint."""
    from flax import nnx

    from compactlm.data import load_tokenizer
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    merged = trainer.cfg.model.adapter.kind != "none"
    if merged:
        from compactlm.train.finetune import merged_trainer

        trainer = merged_trainer(trainer)
    model = trainer.program.model(trainer.state)
    state = nnx.to_pure_dict(nnx.state(model))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tokenizer = load_tokenizer(Path(run_dir))
    return trainer.cfg, tokenizer, state, params, int(trainer.state.step), merged


def export_gguf(run_dir: str, out_dir: str, opts: GGUFExportConfig) -> dict[str, Any]:
    """Write `out_dir/model.gguf`; returns a summary with one `Written` (gguf_blocks) per tensor."""
    try:
        import gguf
    except ImportError as e:
        raise InteropError(
            "format=gguf needs the gguf package (llama.cpp's writer): pip install 'compactlm[gguf]'"
        ) from e

    from compactlm.interop.hf import written_whole
    from compactlm.train.run_dir import read_config

    _check_config(read_config(run_dir))  # before any weight loads
    lora = None
    if opts.adapter == "separate":
        from compactlm.interop import gguf_lora

        gguf_lora.check_run(read_config(run_dir), opts.adapter)
        cfg, tokenizer, state, params, step, lora = gguf_lora.load_separate(run_dir)
        merged = False
    else:
        cfg, tokenizer, state, params, step, merged = _load(run_dir)
    arch = _check_config(cfg)
    m = cfg.model
    dense = to_hf_tensors(params, m)
    packed = _packed_linears(state, params, m)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], m.n_layers)
    run_dtype = m.param_dtype
    n_vocab = dense["model.embed_tokens.weight"].shape[0]

    tensors: list[tuple[str, np.ndarray, Any]] = []
    written: list[gb.Written] = []
    ordered = {**dense, **packed}
    for hf_name in sorted(ordered, key=gguf_arch.tensor_order):
        w = ordered[hf_name]
        gname = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise InteropError(f"tensor {hf_name} has no name in gguf's {arch} tensor map")
        w = _permuted(hf_name, w, m) if arch in gguf_arch.PERMUTED else w
        is_block_linear = hf_name.startswith("model.layers.") and hf_name.endswith("proj.weight")
        if isinstance(w, Packed) or is_block_linear:
            kn = w if isinstance(w, Packed) else np.asarray(w).T
            t = auto_type(w if isinstance(w, Packed) else None, run_dtype)
            t = t if opts.type == "auto" else opts.type
            data, raw, rec = encode_linear(gname, kn, t)
            rec.linear = True
        elif np.ndim(w) == 1:  # norms and biases, F32 (Gemma 3's norms as their gain)
            (data, how), raw = gguf_arch.vector(hf_name, w, m, arch), None
            rec = gb.Written(gname, "F32", how)
        else:  # embedding / head: the run's dtype, or the float type asked for
            t = opts.type if opts.type in ("f32", "f16", "bf16") else _dense(run_dtype)
            data, raw = gb.float_tensor(np.asarray(w), t)
            err = np.abs(gb.float_value(np.asarray(w), t) - np.asarray(w, np.float32))
            rec = gb.Written(gname, t.upper(), "as stored", float(np.max(err, initial=0.0)))
        tensors.append((gname, data, raw))
        written.append(rec)
    if m.rope_scaling == "llama3":
        freqs = rope_freqs(m)
        tensors.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs, None))
        written.append(gb.Written("rope_freqs.weight", "F32", "as stored"))

    interrupt.check("stopped before the export was written")
    out = Path(out_dir)
    with written_whole(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp / GGUF_FILE), arch)
        _metadata(writer, cfg, arch, n_vocab, Path(run_dir).name)
        _tokenizer(writer, tokenizer, n_vocab)
        linear_types = [r.ggml_type for r in written if r.linear]
        writer.add_file_type(gb.file_type(linear_types))
        if any(t.startswith("Q") for t in linear_types):
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for gname, data, raw in tensors:
            writer.add_tensor(gname, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        adapter = None
        if lora is not None:  # the same name map and q / k permutation as the base's tensors
            adapter = gguf_lora.write_adapter(
                tmp / gguf_lora.ADAPTER_FILE,
                lora,
                arch=arch,
                names=names,
                t=opts.type,
                run_dtype=run_dtype,
                name=Path(run_dir).name,
                permute=lambda n, w: _permuted(n, w, m) if arch in gguf_arch.PERMUTED else w,
            )
    # Requantized linears (NF4 / FP4 → Q8_0, or a forced type): what they change in eval loss,
    # compactlm's own eval on the file's weights read back by gguf-py (interop/gguf_values.py)
    loss = None
    if lora is None and any(r.how == "requantized" for r in written):
        from compactlm.interop.gguf_values import eval_change

        n = opts.eval_tokens
        loss = {"tokens": 0, "why": "eval_tokens=0"}
        if n:
            try:  # the file is whole already: a failed measurement is reported, not fatal
                loss = eval_change(run_dir, str(out / GGUF_FILE), arch, n)
            except (OSError, ValueError) as e:  # (InteropError, ConfigError are ValueErrors)
                loss = {"tokens": 0, "why": f"{type(e).__name__}: {e}"}
    return {
        "step": step,
        "arch": arch,
        "merged": merged,
        "eval": loss,
        "adapter": adapter,
        "written": written,
        "out": str(out / GGUF_FILE),
        "bytes": os.path.getsize(out / GGUF_FILE),
    }


def _dense(run_dtype: str) -> str:
    return "f32" if run_dtype == "float32" else "bf16"


def _permuted(hf_name: str, w, m):
    """llama: q / k rows (weights and biases) into llama.cpp's interleaved RoPE pairs."""
    if ".q_proj." in hf_name:
        heads = m.n_heads
    elif ".k_proj." in hf_name:
        heads = m.n_kv_heads
    else:
        return w
    if isinstance(w, Packed):  # our columns are HF's rows
        n = next(iter(w.arrays.values())).shape[1]
        idx = gguf_arch.llama_permute_index(n, heads)
        return w.columns(lambda a: a[:, idx])
    return np.asarray(w)[gguf_arch.llama_permute_index(np.shape(w)[0], heads)]


def report(summary: dict[str, Any]) -> list[str]:
    """The printed lines: one per (type, how) with its worst tensor's error, then warnings."""
    lines = []
    groups: dict[tuple[str, str], list[gb.Written]] = {}
    for r in summary["written"]:
        groups.setdefault((r.ggml_type, r.how), []).append(r)
    for (t, how), rs in sorted(groups.items()):
        worst = max(rs, key=lambda r: r.max_error)
        line = f"  {t:<5} {how:<12} {len(rs):>4} tensors, max |weight error| {worst.max_error:.3g}"
        if worst.max_error:
            line += f" ({worst.name})"
        inexact = sum(r.inexact_scales for r in rs)
        if inexact:
            line += f"; {inexact:,} scales not exactly float16"
        lines.append(line)
    e = summary.get("eval")
    if e and not e["tokens"]:
        why = e.get("why", "eval_tokens=0")
        lines.append(f"  eval loss of the requantized weights: not measured ({why})")
    elif e:
        lines.append(
            f"  eval loss over {int(e['tokens']):,} validation tokens: {e['before']:.6f} as the "
            f"run computes, {e['after']:.6f} with the file's weights "
            f"({e['after'] - e['before']:+.3g} nats/token)"
        )
    if summary.get("adapter"):
        from compactlm.interop import gguf_lora

        lines += gguf_lora.report(summary["adapter"], str(Path(summary["out"]).parent))
    return lines
