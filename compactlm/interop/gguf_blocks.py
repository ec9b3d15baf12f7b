"""GGML block types Q4_0, Q4_1 and Q8_0 packed from codes and scales, bit-exact, pure NumPy.

Data contract (ggml's `block_q4_0` / `block_q4_1` / `block_q8_0` in ggml-common.h; all little
endian). A GGUF matrix is row-major `[rows, cols]` = `[out, in]` (ne0 = in), cut along each row
into blocks of QK = 32 consecutive weights; `cols % 32 == 0`.

- Q4_0, 18 bytes: f16 `d`, then 16 bytes; byte j holds weight j in its low nibble and weight
  j + 16 in its high nibble; `w = d · (nibble − 8)`.
- Q4_1, 20 bytes: f16 `d`, f16 `m`, then the 16 bytes of Q4_0's nibble order; `w = d · nibble + m`.
- Q8_0, 34 bytes: f16 `d`, then 32 int8 `q`; `w = d · q`.
- BF16 (not a block type; 2 bytes a weight): the high half of the f32 bit pattern.

The functions take codes and scales already in GGUF's orientation (`codes[rows, cols]`,
`d[rows, cols / 32]`) and return the raw bytes `uint8[rows, cols / 32 · block bytes]` that
`GGUFWriter.add_tensor(..., raw_dtype=...)` stores as they are. How our `[K, N]` int4 storage
(kernels/packing.py) becomes these codes, and what each step costs, is interop/gguf.py's part.
The `quantize_*` functions are round-to-nearest from float weights, for the types a run does not
already hold (``type=q8_0`` of a dense run, NF4 written at the closest type); they round with
the f16 scale that is stored, so the error they print is the error llama.cpp computes with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

QK = 32  # weights per block, the same for the three types (ggml-common.h QK4_0 / QK4_1 / QK8_0)
BLOCK_BYTES = {"q4_0": 2 + QK // 2, "q4_1": 4 + QK // 2, "q8_0": 2 + QK}


def _check_codes(codes: np.ndarray, lo: int, hi: int, what: str) -> tuple[int, int]:
    if codes.ndim != 2:
        raise ValueError(f"{what} codes must be 2-D [rows, cols], got shape {codes.shape}")
    rows, cols = codes.shape
    if cols % QK:
        raise ValueError(f"{what}: a row of {cols} weights is not a whole number of {QK}-blocks")
    if codes.size and (codes.min() < lo or codes.max() > hi):
        raise ValueError(
            f"{what} codes must lie in [{lo}, {hi}], got [{codes.min()}, {codes.max()}]"
        )
    return rows, cols


def _f16_bytes(a: np.ndarray, rows: int, cols: int, what: str) -> np.ndarray:
    """`a[rows, cols / 32]` as f16 → uint8 [rows, cols / 32, 2] (little endian)."""
    a = np.asarray(a)
    if a.shape != (rows, cols // QK):
        raise ValueError(f"{what} must have shape {(rows, cols // QK)}, got {a.shape}")
    if a.dtype != np.float16:
        raise ValueError(f"{what} must be float16 (it is stored as is), got {a.dtype}")
    return np.ascontiguousarray(a, "<f2").view(np.uint8).reshape(rows, cols // QK, 2)


def _nibble_bytes(nib: np.ndarray) -> np.ndarray:
    """Unsigned nibbles [rows, cols] → [rows, cols / 32, 16]: low = weight j, high = j + 16."""
    rows, cols = nib.shape
    b = nib.astype(np.uint8).reshape(rows, cols // QK, 2, QK // 2)
    return b[:, :, 0, :] | (b[:, :, 1, :] << 4)


def pack_q4_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Signed codes q ∈ [-8, 7] `[rows, cols]` and f16 `d[rows, cols/32]` → Q4_0 bytes; the
    stored nibble is q + 8, so `w = d · q` exactly."""
    rows, cols = _check_codes(codes, -8, 7, "Q4_0")
    nib = np.asarray(codes, np.int16) + 8
    out = np.concatenate([_f16_bytes(d, rows, cols, "Q4_0 d"), _nibble_bytes(nib)], axis=2)
    return out.reshape(rows, cols // QK * BLOCK_BYTES["q4_0"])


def pack_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Unsigned codes q ∈ [0, 15], f16 `d` and `m` (each `[rows, cols/32]`) → Q4_1 bytes."""
    rows, cols = _check_codes(codes, 0, 15, "Q4_1")
    parts = [_f16_bytes(d, rows, cols, "Q4_1 d"), _f16_bytes(m, rows, cols, "Q4_1 m")]
    out = np.concatenate([*parts, _nibble_bytes(np.asarray(codes))], axis=2)
    return out.reshape(rows, cols // QK * BLOCK_BYTES["q4_1"])


def pack_q8_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """int8 codes `[rows, cols]` and f16 `d[rows, cols/32]` → Q8_0 bytes."""
    rows, cols = _check_codes(codes, -128, 127, "Q8_0")
    q = np.asarray(codes, np.int8).view(np.uint8).reshape(rows, cols // QK, QK)
    out = np.concatenate([_f16_bytes(d, rows, cols, "Q8_0 d"), q], axis=2)
    return out.reshape(rows, cols // QK * BLOCK_BYTES["q8_0"])


def bf16_bytes(w: np.ndarray) -> np.ndarray:
    """A float matrix `[rows, cols]` → BF16 bytes `[rows, 2·cols]`; bf16 input is kept bit for
    bit, f32 is rounded to nearest even (the rounding of jnp.astype(bfloat16))."""
    w = np.asarray(w)
    if w.dtype.name == "bfloat16":
        bits = w.view(np.uint16)
    else:
        u = np.ascontiguousarray(w, np.float32).view(np.uint32).astype(np.uint64)
        bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
        nan = np.isnan(np.asarray(w, np.float32))
        bits = np.where(nan, np.uint16(0x7FC0), bits)
    return np.ascontiguousarray(bits.astype("<u2")).view(np.uint8).reshape(w.shape[0], -1)


# ----------------------------------------------------------------------------- from floats


def _blocks(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, np.float32)
    if w.ndim != 2 or w.shape[1] % QK:
        raise ValueError(f"a [rows, cols] matrix with cols % {QK} == 0 is needed, got {w.shape}")
    return w.reshape(w.shape[0], w.shape[1] // QK, QK)


def _safe(d16: np.ndarray) -> np.ndarray:
    d = d16.astype(np.float32)
    return np.where(d == 0, np.float32(1), d)


def quantize_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest: `d = absmax / 127` (stored f16), `q = round(w / d)` → (codes, d)."""
    wb = _blocks(w)
    d16 = (np.max(np.abs(wb), axis=2) / np.float32(127)).astype(np.float16)
    q = np.clip(np.rint(wb / _safe(d16)[..., None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), d16


def quantize_q4_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round to nearest with ggml's choice of d: the signed extreme maps to code −8
    (`d = max / −8`), so the range [−8, 7] is used whole → (signed codes, d)."""
    wb = _blocks(w)
    idx = np.argmax(np.abs(wb), axis=2)[..., None]
    extreme = np.take_along_axis(wb, idx, axis=2)[..., 0]
    d16 = (extreme / np.float32(-8)).astype(np.float16)
    q = np.clip(np.rint(wb / _safe(d16)[..., None]), -8, 7).astype(np.int8)
    return q.reshape(w.shape), d16


def quantize_q4_1(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round to nearest over [min, max] of each block: `d = (max − min) / 15`, `m = min`
    (both stored f16) → (unsigned codes, d, m)."""
    wb = _blocks(w)
    m16 = np.min(wb, axis=2).astype(np.float16)
    d16 = ((np.max(wb, axis=2) - m16.astype(np.float32)) / np.float32(15)).astype(np.float16)
    q = np.rint((wb - m16.astype(np.float32)[..., None]) / _safe(d16)[..., None])
    return np.clip(q, 0, 15).astype(np.uint8).reshape(w.shape), d16, m16


# ----------------------------------------------------------------------------- the spec's values


def value_q4_0(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """What a Q4_0 reader computes, in f32: `d · (nibble − 8)` = `d · q`."""
    return codes.astype(np.float32) * np.repeat(d.astype(np.float32), QK, axis=1)


def value_q4_1(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """What a Q4_1 reader computes, in f32: `d · q + m`."""
    rep = lambda a: np.repeat(a.astype(np.float32), QK, axis=1)  # noqa: E731
    return rep(d) * codes.astype(np.float32) + rep(m)


value_q8_0 = value_q4_0  # `d · q` as well


# Float types and the record of what became of a tensor (interop/gguf.py, gguf_lora.py)


@dataclasses.dataclass
class Written:
    """What became of one tensor: its GGUF type, how, and the measured max |error|."""

    name: str
    ggml_type: str
    how: str  # "as stored" | "codes kept" | "converted" | "requantized" | "dense"
    max_error: float = 0.0
    inexact_scales: int = 0  # scales (or Q4_1 offsets) that are not f16
    linear: bool = False  # a block linear (what type= chooses for)


def float_tensor(w_NK: np.ndarray, t: str) -> tuple[np.ndarray, Any]:
    """(array or raw bytes, raw GGML type or None) of a float tensor at f32 / f16 / bf16."""
    from gguf import GGMLQuantizationType as Q

    if t == "f32":
        return np.ascontiguousarray(w_NK, np.float32), None
    if t == "f16":
        return np.ascontiguousarray(np.asarray(w_NK, np.float32).astype(np.float16)), None
    return bf16_bytes(w_NK), Q.BF16


def float_value(w_NK: np.ndarray, t: str) -> np.ndarray:
    """The f32 values llama.cpp reads back from float_tensor(w_NK, t)."""
    import ml_dtypes

    w = np.asarray(w_NK)
    if t == "f32":
        return w.astype(np.float32)
    dtype = np.float16 if t == "f16" else ml_dtypes.bfloat16
    return w.astype(np.float32).astype(dtype).astype(np.float32)


def file_type(types: list[str]) -> int:
    """general.file_type: the most common type among the tensors written."""
    import gguf

    F = gguf.LlamaFileType
    by = {"F32": F.ALL_F32, "F16": F.MOSTLY_F16, "BF16": F.MOSTLY_BF16, "Q8_0": F.MOSTLY_Q8_0}
    by |= {"Q4_0": F.MOSTLY_Q4_0, "Q4_1": F.MOSTLY_Q4_1}
    return int(by[max(set(types), key=types.count)])
