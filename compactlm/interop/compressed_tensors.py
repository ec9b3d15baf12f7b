"""compressed-tensors export (llm-compressor's checkpoint format, read by vLLM and transformers).

`compactlm export RUN_DIR format=compressed-tensors workdir=OUT` writes the family's HF
config.json plus `quantization_config`, model.safetensors and the tokenizer files. Embeddings,
norms, biases and an untied lm_head are the dense HF export's tensors (interop/hf_tensors.py);
each block linear is written per HF projection (fused qkv / gate_up split by the model's own
column views, as the GGUF export does) with the codes compactlm chose, never rounded again.

Data contract of "pack-quantized" int4 (compressed-tensors 0.20.1, `pack_to_int32` /
`PackedQuantizationCompressor`), for an HF weight [out, in] = our [K, N] transposed:

- `weight_packed [N, K/8]` int32: element k of row n in bits 4·(k % 8) of word k // 8, stored
  unsigned as `q_ct + 8` where `q_ct ∈ [-8, 7]`.
- `weight_scale [N, K/G]` (G = K: strategy "channel", [N, 1]), the run's parameter dtype.
- `weight_zero_point [N/8, K/G]` int32 (asymmetric only): z_ct + 8 packed along OUT (dim 0).
- `weight_shape [2]` int64: [N, K].
- decompressed: `w = (q_ct − z_ct) · s`.

Ours (kernels/packing.py, DESIGN §3): `qweight [K/8, N]`, code k % 8 in bits 4·(k % 8), so the
nibble layout along K is the same and the words are our words transposed:
symmetric: our signed nibble q (two's complement) → q + 8 = nibble XOR 8; affine: our unsigned
q ∈ [0, 15] with an integer z ∈ [0, 15] → q_ct = q − 8, z_ct = z − 8 (q_ct − z_ct = q − z): the
nibbles are written as they are. Either way `(q_ct − z_ct) · s` is our `(q − z) · s` in f32.

2:4 runs (sparse24, sparse24_int4) have no compressed 2:4 storage that compressed-tensors ≥ 0.15
still decompresses (its Sparse24 / marlin-24 compressors were removed), so they are written as
llm-compressor writes a sparse model saved uncompressed: `sparsity_config` with format "dense"
and sparsity_structure "2:4"; the weights are dense with their zeros (sparse24_int4: int4
pack-quantized, a pruned slot holding the code of 0, a compressed group of G rows becoming a
dense group of 2·G). nf4 / fp4 code books have no compressed-tensors form: refused.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import numpy as np

from compactlm import interrupt
from compactlm.interop.hf_config import InteropError

CT_VERSION = "0.20.1"  # the compressed-tensors release whose format this writes (and was checked)
QUANT_METHOD = "compressed-tensors"
FORMAT = "pack-quantized"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CTExportConfig:
    """Options of `compactlm export RUN_DIR format=compressed-tensors workdir=OUT`."""

    # Target format: "compressed-tensors" here (hf: commands.ExportConfig; gguf: interop/gguf).
    format: typing.Literal["hf", "gguf", "compressed-tensors"] = "compressed-tensors"
    # Adapter runs: "merged" folds the adapters into the base first (as `compactlm merge`).
    adapter: typing.Literal["merged"] = "merged"


# ---------------------------------------------------------------------------------------------
# One block linear: our packed arrays [·, N] → compressed-tensors tensors [N, ·]
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Linear:
    """One HF projection as written: its tensors and what it decompresses to."""

    tensors: dict[str, np.ndarray]  # local names: weight_packed, weight_scale, ...
    group: int  # dense rows of K per scale
    k: int  # in_features
    max_error: float = 0.0  # max |decompressed − our f32 dequantized| (scale dtype cast)


def _dense_int4(p) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """(qweight [K/8, N], scales [K/G, N], zeros | None, G) in dense rows; sparse24_int4's
    compressed values decompressed with the code of 0 in every pruned slot."""
    from compactlm.kernels import packing

    a = p.arrays
    if p.fmt == "int4":
        q, s, z = a["qweight"], np.asarray(a["scales"]), a.get("zeros")
        return q, s, None if z is None else np.asarray(z), q.shape[0] * 8 // s.shape[0]
    s, z = np.asarray(a["scales"]), a.get("zeros")
    z = None if z is None else np.asarray(z)
    codes = np.asarray(packing.unpack_int4(a["qvalues"], signed=z is None), np.int32)  # [K/2, N]
    K = codes.shape[0] * 2
    g = K // s.shape[0]  # dense rows per scale (compressed groups span twice as many rows)
    zero_code = np.zeros((K, codes.shape[1]), np.int32)
    if z is not None:
        zero_code[:] = np.repeat(z, g, axis=0).astype(np.int32)  # (q − z)·s = 0 at q = z
    i0, i1 = (np.asarray(x) for x in packing.unpack_meta_24(a["meta"]))  # [K/4, N]
    dense = zero_code.reshape(K // 4, 4, -1)
    pairs = codes.reshape(K // 4, 2, -1)
    np.put_along_axis(dense, i0[:, None], pairs[:, :1], axis=1)
    np.put_along_axis(dense, i1[:, None], pairs[:, 1:], axis=1)
    return np.asarray(packing.pack_int4(dense.reshape(K, -1))), s, z, g


def _check_zeros(z: np.ndarray) -> np.ndarray:
    zi = np.rint(z).astype(np.int32)
    if np.any(zi != z) or np.any((zi < 0) | (zi > 15)):
        raise InteropError(
            "an int4 zero point is not an integer in [0, 15]: compressed-tensors stores int4 "
            "zero points as int4 (export format=hf after `compactlm merge dequantize=true`)"
        )
    return zi


def encode_int4(p, scale_dtype) -> Linear:
    """A gguf.Packed int4 / sparse24_int4 linear ([K, N] ours) as pack-quantized tensors."""
    from compactlm.kernels import packing

    qweight, s, z, g = _dense_int4(p)
    K, N = qweight.shape[0] * 8, qweight.shape[1]
    words = np.asarray(qweight, np.int32).view(np.uint32)
    if z is None:
        words = words ^ np.uint32(0x88888888)  # signed nibble q → q + 8 (mod 16)
    out = {
        "weight_packed": np.ascontiguousarray(words.view(np.int32).T),
        "weight_scale": np.ascontiguousarray(s.T.astype(scale_dtype)),
        "weight_shape": np.array([N, K], np.int64),
    }
    if z is not None:
        zi = _check_zeros(z).T  # [N, K/G], stored z_ct + 8 = z
        if N % 8:
            raise InteropError(f"an asymmetric linear with {N} outputs: zero points pack by 8")
        out["weight_zero_point"] = np.ascontiguousarray(packing.pack_int4(zi))  # along N
    exact = p.dequantize()
    written = packing.dequantize_int4(qweight, out["weight_scale"].T.astype(np.float32), z)
    err = float(np.max(np.abs(np.asarray(written) - exact), initial=0.0))
    return Linear(out, g, K, err)


# ---------------------------------------------------------------------------------------------
# config.json's quantization_config / sparsity_config
# ---------------------------------------------------------------------------------------------


def quantization_config(
    *, symmetric: bool, group: int | None, sparsity: dict | None = None
) -> dict[str, Any]:
    """llm-compressor's `quantization_config` for int4 weight-only on every Linear but lm_head
    (group None: one scale per output channel, strategy "channel")."""
    weights = {
        "num_bits": 4,
        "type": "int",
        "symmetric": symmetric,
        "group_size": group,
        "strategy": "channel" if group is None else "group",
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
    }
    return {
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
        },
        "format": FORMAT,
        "global_compression_ratio": None,
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
        "quant_method": QUANT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": sparsity or {},
        "transform_config": {},
        "version": CT_VERSION,
    }


def sparsity_config(global_sparsity: float) -> dict[str, Any]:
    """A 2:4 model stored dense (compressed-tensors ≥ 0.15 decompresses no 2:4 format)."""
    return {
        "format": "dense",
        "global_sparsity": global_sparsity,
        "ignore": ["lm_head"],
        "registry_requires_subclass": False,
        "sparsity_structure": "2:4",
        "targets": ["Linear"],
    }


# ---------------------------------------------------------------------------------------------
# The export
# ---------------------------------------------------------------------------------------------

_REFUSED = {
    "nf4": "an NF4 code book",
    "fp4": "an FP4 (E2M1) code book",
}


def check_format(weight_format: str) -> None:
    """Refuse, from config.json alone, what has no compressed-tensors form."""
    if weight_format in _REFUSED:
        raise InteropError(
            f"a {weight_format} run stores {_REFUSED[weight_format]}, which compressed-tensors "
            "has no form for (its int4 is affine on an integer grid); export format=gguf, or "
            "`compactlm merge RUN workdir=M dequantize=true` and export M format=hf"
        )


def ct_tensors(state: dict, params: dict, m) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(safetensors dict, facts) of a loaded run: dense HF tensors with every block linear's
    `.weight` replaced by its compressed-tensors tensors."""
    from compactlm.interop.gguf import _packed_linears
    from compactlm.interop.hf_tensors import to_hf_tensors

    fmt = m.weight_format
    check_format(fmt)
    tensors = to_hf_tensors(params, m)
    packed = _packed_linears(state, params, m)
    scale_dtype = np.dtype(next(iter(tensors.values())).dtype)  # the run's parameter dtype
    linears: dict[str, Linear] = {}
    nonzero = total = 0
    for name, p in packed.items():
        if p.fmt == "sparse24":  # dense values with their zeros, in the run's dtype
            w = p.dequantize()
            tensors[name] = np.ascontiguousarray(w.T.astype(scale_dtype))
        else:
            linears[name] = enc = encode_int4(p, scale_dtype)
            tensors |= {name.removesuffix("weight") + k: v for k, v in enc.tensors.items()}
            w = p.dequantize() if fmt == "sparse24_int4" else None
        if w is not None:
            nonzero, total = nonzero + int(np.count_nonzero(w)), total + w.size
    if packed and not linears and fmt != "sparse24":
        raise InteropError(f"weight_format {fmt!r} has no compressed-tensors writer")
    groups = {lin.group for lin in linears.values()}
    if len(groups) > 1 and all(lin.group == lin.k for lin in linears.values()):
        groups = {None}  # per channel: one scale per output row whatever K is
    if len(groups) > 1:
        raise InteropError(
            f"block linears with different group sizes ({sorted(map(str, groups))}): one "
            "compressed-tensors config group holds one group_size"
        )
    sparse = fmt in ("sparse24", "sparse24_int4")
    facts = {
        "linears": linears,
        "group": groups.pop() if groups else None,
        "symmetric": all("weight_zero_point" not in lin.tensors for lin in linears.values()),
        "sparsity": 1 - nonzero / total if sparse and total else None,
        "max_error": max((lin.max_error for lin in linears.values()), default=0.0),
    }
    return tensors, facts


def config_json(cfg, tokenizer, facts: dict[str, Any]) -> dict[str, Any]:
    from compactlm.interop.hf_config import hf_config

    out = hf_config(cfg, tokenizer)
    sparsity = None if facts["sparsity"] is None else sparsity_config(facts["sparsity"])
    if facts["linears"]:
        out["quantization_config"] = quantization_config(
            symmetric=facts["symmetric"], group=facts["group"], sparsity=sparsity
        )
    elif sparsity is not None:  # 2:4 without quantization
        out["quantization_config"] = {
            "quant_method": QUANT_METHOD,
            "format": "dense",
            "quantization_status": "compressed",
            "sparsity_config": sparsity,
            "version": CT_VERSION,
        }
    return out


def export_compressed_tensors(run_dir: str, out_dir: str, opts: CTExportConfig) -> dict[str, Any]:
    """Write `out_dir` (config.json, model.safetensors, tokenizer files); returns a summary."""
    from safetensors.numpy import save_file

    from compactlm.data.tokenizer import chmod_as_umask
    from compactlm.interop.gguf import _load
    from compactlm.interop.hf import _write_json, write_tokenizer_files, written_whole
    from compactlm.interop.hf_config import HF_CONFIG
    from compactlm.interop.safetensors_io import HF_WEIGHTS
    from compactlm.train.run_dir import read_config

    check_format(read_config(run_dir).model.weight_format)  # before any weight loads
    cfg, tokenizer, state, params, step, merged = _load(run_dir)
    tensors, facts = ct_tensors(state, params, cfg.model)
    interrupt.check("stopped before the export was written")
    out = Path(out_dir)
    with written_whole(out) as tmp:
        _write_json(tmp / HF_CONFIG, config_json(cfg, tokenizer, facts))
        save_file(tensors, str(tmp / HF_WEIGHTS), metadata={"format": "pt"})
        chmod_as_umask(tmp / HF_WEIGHTS)  # safetensors creates it 0600
        write_tokenizer_files(tmp, cfg, tokenizer)
    return {
        "step": step,
        "merged": merged,
        "weight_format": cfg.model.weight_format,
        "tensors": len(tensors),
        "packed": len(facts["linears"]),
        "group": facts["group"],
        "symmetric": facts["symmetric"],
        "sparsity": facts["sparsity"],
        "max_error": facts["max_error"],
        "bytes": (out / HF_WEIGHTS).stat().st_size,
        "out": str(out),
    }


def report(summary: dict[str, Any]) -> str:
    """The printed line after the header: what was packed, and the measured error."""
    if not summary["packed"]:
        return "  dense weights (2:4 zeros stored), sparsity_config 2:4"
    scheme = "symmetric" if summary["symmetric"] else "asymmetric"
    group = "channel" if summary["group"] is None else f"group {summary['group']}"
    line = (
        f"  {FORMAT} int4 {scheme} {group}: {summary['packed']} linears, codes kept, "
        f"max |weight error| {summary['max_error']:.3g}"
    )
    if summary["sparsity"] is not None:
        line += f"; sparsity_config 2:4 (global sparsity {summary['sparsity']:.3f})"
    return line


__all__ = ["CTExportConfig", "export_compressed_tensors", "quantization_config", "report"]
