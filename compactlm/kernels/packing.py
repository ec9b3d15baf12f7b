"""Storage contracts for packed weights: int4 (sym/affine), NF4, FP4 and 2:4, bit-exact, pure jnp.

Data contract (docs/architecture.md §4; GEMM letters, W is [K, N] like Flax's Linear.kernel, packed
along K):

- ``qweight[K/8, N]`` int32: eight 4-bit codes per word, the code of row ``k`` sits in bits
  ``4·(k % 8)`` of word ``qweight[k // 8, n]``.
- int4 symmetric: the code is a signed nibble ``q ∈ [-8, 7]`` (two's complement), ``w = q · s``.
- int4 affine: the code is unsigned ``q ∈ [0, 15]``, ``w = (q − z) · s`` with a (float, integer
  valued) zero point ``z``.
- ``scales[K/G, N]`` (and ``zeros[K/G, N]``) in f32 or bf16; group g covers rows ``[g·G, (g+1)·G)``.
  G ∈ {32, 64, 128, 256} or G = K (per-channel, ``group_size=None``).
- NF4 / FP4: the unsigned code indexes a 16-entry code book normalised to [-1, 1]
  (NF4: the QLoRA paper's table; FP4: E2M1 / 6); ``w = codebook[q] · absmax`` with the per-block
  absmax stored as ``scales[K/G, N]`` (block 64 by default).
- Double quantization (QLoRA §3): the absmax constants are quantized again to int8 in blocks of
  256 after subtracting their mean; ``bits_per_parameter`` reports the resulting storage cost.

The functions take jax or numpy arrays and return jax arrays; the reference matmuls in
``int4_matmul.py`` are built on ``dequantize``. Sources: QLoRA (Dettmers et al. 2023, §3 and
Appendix E for NF4), the OCP MX spec for E2M1, GPTQ/gemlite for the int32 nibble layout.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Format = Literal["int4", "nf4", "fp4"]
FORMATS: tuple[str, ...] = ("int4", "nf4", "fp4")
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)  # or None / K for per-channel
DEFAULT_GROUP_SIZE = {"int4": 128, "nf4": 64, "fp4": 64}
DOUBLE_QUANT_BLOCK = 256
CODES_PER_WORD = 8

# QLoRA's NF4 table (bitsandbytes `create_normal_map(0.9677083)`): 16 quantiles of N(0, 1),
# asymmetric so that zero is exact, normalised to [-1, 1]. Code 7 is 0.
NF4_CODEBOOK = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)

# E2M1: bit 3 sign, bits 2..1 exponent (bias 1), bit 0 mantissa; magnitudes
# 0, 0.5, 1, 1.5, 2, 3, 4, 6 (code 8 is -0). Divided by 6 so that absmax maps to ±1.
FP4_E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
FP4_CODEBOOK = FP4_E2M1_VALUES / np.float32(6.0)

CODEBOOKS: dict[str, np.ndarray] = {"nf4": NF4_CODEBOOK, "fp4": FP4_CODEBOOK}


# ----------------------------------------------------------------------------- validation


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid formats: {', '.join(FORMATS)}")


def resolve_group_size(k: int, group_size: int | None) -> int:
    """Validate (K, G) and return G (``None`` or ``K`` mean one group per column)."""
    if k % CODES_PER_WORD:
        raise ValueError(
            f"K={k} must be divisible by 8: eight 4-bit codes are packed per int32 along K"
        )
    if group_size is None or group_size == k:
        return k
    if group_size not in GROUP_SIZES:
        raise ValueError(
            f"group_size={group_size} is not supported; valid choices: "
            f"{', '.join(map(str, GROUP_SIZES))}, or None / K={k} for per-channel"
        )
    if k % group_size:
        raise ValueError(f"K={k} is not divisible by group_size={group_size}")
    return group_size


def _check_float(w, what: str) -> None:
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"{what} must be a float array (f32, bf16, f16), got dtype {w.dtype}")


def _check_2d(a, what: str) -> None:
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {tuple(a.shape)}")


def check_packed(qweight, scales, zeros=None, *, group_size: int | None = None) -> int:
    """Validate packed operands against each other; return the group size G."""
    _check_2d(qweight, "qweight")
    _check_2d(scales, "scales")
    if qweight.dtype != jnp.int32:
        raise ValueError(f"qweight must be int32 (eight nibbles per word), got {qweight.dtype}")
    k, n = qweight.shape[0] * CODES_PER_WORD, qweight.shape[1]
    if scales.shape[1] != n or k % scales.shape[0]:
        raise ValueError(
            f"scales shape {tuple(scales.shape)} does not fit qweight {tuple(qweight.shape)} "
            f"(K={k}, N={n}): expected [K/G, N]"
        )
    g = k // scales.shape[0]
    if group_size is not None and resolve_group_size(k, group_size) != g:
        raise ValueError(
            f"group_size={group_size} disagrees with scales shape {tuple(scales.shape)} "
            f"(K={k} gives G={g})"
        )
    if zeros is not None and tuple(zeros.shape) != tuple(scales.shape):
        raise ValueError(f"zeros shape {tuple(zeros.shape)} must equal scales {scales.shape}")
    return g


# ----------------------------------------------------------------------------- pack / unpack


def pack_int4(codes) -> jnp.ndarray:
    """Pack integer codes ``[K, N]`` (signed [-8, 7] or unsigned [0, 15]) into ``[K/8, N]`` int32.

    Only the low nibble of each code is kept, so signed codes are stored in two's complement.
    """
    _check_2d(codes, "codes")
    if not jnp.issubdtype(codes.dtype, jnp.integer):
        raise ValueError(f"codes must be an integer array, got dtype {codes.dtype}")
    k, n = codes.shape
    resolve_group_size(k, None)
    nib = (jnp.asarray(codes).astype(jnp.int32) & 0xF).reshape(k // 8, 8, n)
    shifts = (4 * jnp.arange(8, dtype=jnp.int32))[None, :, None]
    # Disjoint bit fields, so OR == sum; uint32 avoids signed overflow of code 7 << 28 etc.
    words = jnp.sum(nib.astype(jnp.uint32) << shifts.astype(jnp.uint32), axis=1, dtype=jnp.uint32)
    return words.view(jnp.int32) if hasattr(words, "view") else words.astype(jnp.int32)


def unpack_int4(qweight, *, signed: bool) -> jnp.ndarray:
    """Inverse of ``pack_int4``: ``[K/8, N]`` int32 → ``[K, N]`` int8 codes."""
    _check_2d(qweight, "qweight")
    if qweight.dtype != jnp.int32:
        raise ValueError(f"qweight must be int32, got dtype {qweight.dtype}")
    qweight = jnp.asarray(qweight)
    k8, n = qweight.shape
    shifts = (4 * jnp.arange(8, dtype=jnp.int32))[None, :, None]
    if signed:
        # Move the nibble to the top, then an arithmetic shift sign-extends it.
        q = (qweight[:, None, :] << (28 - shifts)) >> 28
    else:
        q = (qweight[:, None, :] >> shifts) & 0xF
    return q.reshape(k8 * 8, n).astype(jnp.int8)


def _expand_groups(a, g: int):
    """``[K/G, N]`` → ``[K, N]`` by repeating each group row G times."""
    return jnp.repeat(jnp.asarray(a), g, axis=0)


# ----------------------------------------------------------------------------- int4


def quantize_int4(
    w, group_size: int | None = 128, *, symmetric: bool = True, scale_dtype=jnp.float32
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
    """Round-to-nearest int4 quantization of ``w[K, N]`` → ``(qweight, scales, zeros | None)``.

    Symmetric: ``s = absmax / 7``, ``q = clip(round(w / s), -8, 7)`` (code −8 is valid storage
    but never produced by RTN). Affine: ``s = (max − min) / 15``, ``z = clip(round(−min / s),
    0, 15)``, ``q = clip(round(w / s) + z, 0, 15)``. Groups with s = 0 get s = 1 (all codes
    then dequantize to exactly 0).
    """
    _check_2d(w, "w")
    _check_float(w, "w")
    k, n = w.shape
    g = resolve_group_size(k, group_size)
    wg = jnp.asarray(w, jnp.float32).reshape(k // g, g, n)
    if symmetric:
        s = jnp.max(jnp.abs(wg), axis=1) / 7.0
        s = jnp.where(s == 0, 1.0, s).astype(scale_dtype)
        sf = s.astype(jnp.float32)[:, None, :]
        q = jnp.clip(jnp.round(wg / sf), -8, 7)
        zeros = None
    else:
        lo = jnp.minimum(jnp.min(wg, axis=1), 0.0)
        hi = jnp.maximum(jnp.max(wg, axis=1), 0.0)
        s = (hi - lo) / 15.0
        s = jnp.where(s == 0, 1.0, s).astype(scale_dtype)
        sf = s.astype(jnp.float32)
        z = jnp.clip(jnp.round(-lo / sf), 0, 15)
        q = jnp.clip(jnp.round(wg / sf[:, None, :]) + z[:, None, :], 0, 15)
        zeros = z.astype(scale_dtype)
    qweight = pack_int4(q.reshape(k, n).astype(jnp.int32))
    return qweight, s, zeros


def dequantize_int4(qweight, scales, zeros=None, *, group_size: int | None = None) -> jnp.ndarray:
    """``w = (q − z) · s`` in f32; symmetric (signed codes, z = 0) when ``zeros`` is None."""
    g = check_packed(qweight, scales, zeros, group_size=group_size)
    q = unpack_int4(qweight, signed=zeros is None).astype(jnp.float32)
    if zeros is not None:
        q = q - _expand_groups(zeros, g).astype(jnp.float32)
    return q * _expand_groups(scales, g).astype(jnp.float32)


# ----------------------------------------------------------------------------- NF4 / FP4


def quantize_codebook(
    w, format: Literal["nf4", "fp4"], block_size: int | None = 64, *, scale_dtype=jnp.float32
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-block absmax + nearest code book entry: ``w[K, N]`` → ``(qweight, absmax[K/G, N])``."""
    if format not in CODEBOOKS:
        raise ValueError(f"unknown code book format {format!r}; valid: {', '.join(CODEBOOKS)}")
    _check_2d(w, "w")
    _check_float(w, "w")
    k, n = w.shape
    g = resolve_group_size(k, block_size)
    wg = jnp.asarray(w, jnp.float32).reshape(k // g, g, n)
    absmax = jnp.max(jnp.abs(wg), axis=1).astype(scale_dtype)
    am = absmax.astype(jnp.float32)
    wn = wg / jnp.where(am == 0, 1.0, am)[:, None, :]
    book = jnp.asarray(CODEBOOKS[format])
    # Ties go to the lower code (argmin's first hit); K·N·16 floats is fine for weight sizes here.
    q = jnp.argmin(jnp.abs(wn[..., None] - book), axis=-1)
    return pack_int4(q.reshape(k, n).astype(jnp.int32)), absmax


def dequantize_codebook(
    qweight, absmax, format: Literal["nf4", "fp4"], *, group_size: int | None = None
) -> jnp.ndarray:
    """``w = codebook[q] · absmax`` in f32."""
    if format not in CODEBOOKS:
        raise ValueError(f"unknown code book format {format!r}; valid: {', '.join(CODEBOOKS)}")
    g = check_packed(qweight, absmax, group_size=group_size)
    q = unpack_int4(qweight, signed=False).astype(jnp.int32)
    return jnp.asarray(CODEBOOKS[format])[q] * _expand_groups(absmax, g).astype(jnp.float32)


def quantize_nf4(w, block_size: int | None = 64, **kw):
    return quantize_codebook(w, "nf4", block_size, **kw)


def quantize_fp4(w, block_size: int | None = 64, **kw):
    return quantize_codebook(w, "fp4", block_size, **kw)


def dequantize_nf4(qweight, absmax, *, group_size: int | None = None):
    return dequantize_codebook(qweight, absmax, "nf4", group_size=group_size)


def dequantize_fp4(qweight, absmax, *, group_size: int | None = None):
    return dequantize_codebook(qweight, absmax, "fp4", group_size=group_size)


# ----------------------------------------------------------------------------- any format


def quantize(
    w,
    format: Format = "int4",
    group_size: int | None | Literal["default"] = "default",
    *,
    symmetric: bool = True,
    **kw,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None]:
    """Quantize ``w[K, N]`` in any 4-bit format → ``(qweight, scales, zeros | None)``.

    ``group_size``: ``"default"`` (int4: 128, NF4 / FP4: 64), an int, or None for per-channel.
    """
    check_format(format)
    g = DEFAULT_GROUP_SIZE[format] if group_size == "default" else group_size
    if format == "int4":
        return quantize_int4(w, g, symmetric=symmetric, **kw)
    if not symmetric:
        raise ValueError(f"format {format!r} is a symmetric code book; affine needs format='int4'")
    return (*quantize_codebook(w, format, g, **kw), None)


def dequantize(
    qweight, scales, zeros=None, *, format: Format = "int4", group_size: int | None = None
) -> jnp.ndarray:
    """The one dequantization rule every kernel must reproduce; f32 ``[K, N]``."""
    check_format(format)
    if format == "int4":
        return dequantize_int4(qweight, scales, zeros, group_size=group_size)
    if zeros is not None:
        raise ValueError(f"format {format!r} has no zero point; pass zeros=None")
    return dequantize_codebook(qweight, scales, format, group_size=group_size)


# ----------------------------------------------------------------------------- double quant


class DoubleQuantized(NamedTuple):
    """Absmax constants quantized again (QLoRA §3): int8 codes, one f32 scale per block, a mean."""

    codes: jnp.ndarray  # int8, same shape as the absmax array
    scales: jnp.ndarray  # f32 [ceil(numel / block)], absmax of (c − mean) per block / 127
    mean: jnp.ndarray  # f32 scalar; absmax values are positive, centring uses the int8 range


def double_quantize(absmax, block_size: int = DOUBLE_QUANT_BLOCK) -> DoubleQuantized:
    """Quantize the absmax constants to int8 in flat blocks of ``block_size`` (row-major)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    c = jnp.asarray(absmax, jnp.float32)
    mean = jnp.mean(c)
    flat = (c - mean).reshape(-1)
    pad = (-flat.size) % block_size
    blocks = jnp.pad(flat, (0, pad)).reshape(-1, block_size)
    s = jnp.max(jnp.abs(blocks), axis=1) / 127.0
    s = jnp.where(s == 0, 1.0, s)
    q = jnp.clip(jnp.round(blocks / s[:, None]), -127, 127).astype(jnp.int8)
    return DoubleQuantized(q.reshape(-1)[: flat.size].reshape(c.shape), s, mean)


def double_dequantize(dq: DoubleQuantized, block_size: int = DOUBLE_QUANT_BLOCK) -> jnp.ndarray:
    """Recover the f32 absmax constants from ``double_quantize``'s output."""
    flat = dq.codes.reshape(-1).astype(jnp.float32)
    if dq.scales.size != -(-flat.size // block_size):
        raise ValueError(
            f"{dq.scales.size} block scales do not fit {flat.size} codes in blocks of "
            f"{block_size}; pass the block_size used by double_quantize"
        )
    s = jnp.repeat(dq.scales, block_size)[: flat.size]
    return (flat * s + dq.mean).reshape(dq.codes.shape)


def bits_per_parameter(
    format: Format = "nf4",
    group_size: int = 64,
    *,
    affine: bool = False,
    double_quant: bool = False,
    scale_bits: int = 32,
    dq_block_size: int = DOUBLE_QUANT_BLOCK,
    shape: tuple[int, int] | None = None,
) -> float:
    """Storage bits per weight: 4-bit codes + scales (+ zeros) (+ double-quant overhead).

    Without ``shape`` the asymptotic cost (QLoRA §3: NF4, G=64, fp32 absmax → 4.5; with double
    quantization 4 + 8/64 + 32/(64·256) ≈ 4.127). With ``shape=(K, N)`` the exact count,
    including the padded last double-quant block and the f32 mean.
    """
    check_format(format)
    if affine and format != "int4":
        raise ValueError(f"affine zero points exist only for format='int4', not {format!r}")
    if shape is None:
        per_group = (8 + 32 / dq_block_size) if double_quant else scale_bits
        if affine:
            per_group += scale_bits
        return 4 + per_group / group_size
    k, n = shape
    g = resolve_group_size(k, group_size)
    n_groups = (k // g) * n
    bits = 4 * k * n
    if double_quant:
        bits += 8 * n_groups + 32 * math.ceil(n_groups / dq_block_size) + 32
    else:
        bits += scale_bits * n_groups
    if affine:
        bits += scale_bits * n_groups
    return bits / (k * n)


# ==================================================================================================
# 2:4 structured sparsity
# ==================================================================================================
# Contract (DESIGN §3), W[K, N] pruned along K: for every column n and every aligned group g of four
# rows (k = 4g … 4g+3) at most two entries are non-zero. Stored as
#   values[K/2, N]  dtype of W (bf16 / f16 / f32): row 2g holds W[4g + i0, n], row 2g+1 holds
#                   W[4g + i1, n]
#   meta[K/32, N]   int32: the nibble of group g is i0 | i1 << 2 with i0 < i1, in row g // 8 at bits
#                   4·(g % 8) — the same nibble order as the int4 qweight above.
# Groups with fewer than two non-zeros still store two distinct positions: the non-zero ones, padded
# with the lowest unused positions (so [0 0 0 0] → (0, 1) and [0 0 0 x] → (0, 3)), with zero values.
# The 2-bit indices are those of NVIDIA's sparse tensor cores / cuSPARSELt, but in our [K, N]
# orientation and nibble order rather than the hardware's interleaved layout; the Triton kernels
# expand the pattern themselves (see sparse24_matmul.py).
# int4+2:4: the values are quantized with the int4 scheme above along the compressed K/2 axis:
#   qvalues[K/16, N] int32 (int4 nibble layout over K/2 rows), scales / zeros[K/2/G, N].

SPARSE24_GROUP = 4  # rows per 2:4 group
SPARSE24_KEEP = 2  # non-zeros allowed per group
META24_GROUPS_PER_WORD = 8  # 4-bit nibbles per int32 metadata word → K must be a multiple of 32


def _check_24_shape(w_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(w_shape) != 2:
        raise ValueError(f"2:4 packing wants a [K, N] matrix, got shape {tuple(w_shape)}")
    K, N = w_shape
    if K % (SPARSE24_GROUP * META24_GROUPS_PER_WORD):
        raise ValueError(
            f"2:4 packing needs K % 32 == 0 (8 four-row groups per int32 metadata word), got K={K}"
        )
    return K, N


def mask_24_magnitude(w: jax.Array) -> jax.Array:
    """W with, in every aligned group of 4 along K, only its 2 largest-|w| entries kept.

    Ties go to the lower row, so the result is deterministic. A helper for tests and a baseline
    pruner (compress/prune.py has the real pruning algorithms).
    """
    K, N = _check_24_shape(w.shape)
    w_g = w.reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N)
    # argsort is stable, so equal magnitudes keep their row order and the lower row wins.
    rank = jnp.argsort(jnp.argsort(-jnp.abs(w_g).astype(jnp.float32), axis=1, stable=True), axis=1)
    return jnp.where(rank < SPARSE24_KEEP, w_g, jnp.zeros((), w.dtype)).reshape(K, N)


def find_24_violation(w) -> str | None:
    """None if W is 2:4 sparse along K, else a message naming the first offending group.

    Host-side (NumPy): it needs concrete values. "First" is the lowest group, then lowest column.
    """
    K, N = _check_24_shape(w.shape)
    nnz = (np.asarray(w).reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N) != 0).sum(axis=1)
    bad = np.argwhere(nnz > SPARSE24_KEEP)  # row-major: sorted by (group, column)
    if bad.size == 0:
        return None
    g, n = (int(i) for i in bad[0])
    return (
        f"matrix is not 2:4 sparse along K: group {g} (rows {4 * g}..{4 * g + 3}) of column {n} "
        f"has {int(nnz[g, n])} non-zeros (at most 2); {len(bad)} offending group(s) in all "
        "(prune first, e.g. with mask_24_magnitude)"
    )


def pack_meta_24(i0: jax.Array, i1: jax.Array) -> jax.Array:
    """Pack per-group positions i0 < i1 ([K/4, N], values 0..3) into meta[K/32, N] int32."""
    G, N = i0.shape
    nib = (i0.astype(jnp.uint32) | (i1.astype(jnp.uint32) << 2)).reshape(
        G // META24_GROUPS_PER_WORD, META24_GROUPS_PER_WORD, N
    )
    shifts = (4 * jnp.arange(META24_GROUPS_PER_WORD, dtype=jnp.uint32))[None, :, None]
    # The nibbles occupy disjoint bits, so the sum is a bitwise or; uint32 keeps bit 31 legal.
    word = jnp.sum(nib << shifts, axis=1, dtype=jnp.uint32)
    return jax.lax.bitcast_convert_type(word, jnp.int32)


def unpack_meta_24(meta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of pack_meta_24: meta[K/32, N] int32 → (i0, i1), each [K/4, N] int32."""
    W, N = meta.shape
    shifts = (4 * jnp.arange(META24_GROUPS_PER_WORD, dtype=jnp.int32))[None, :, None]
    # Arithmetic shift of a negative word drags sign bits in from the top; & 0xF drops them.
    nib = ((meta[:, None, :] >> shifts) & 0xF).reshape(W * META24_GROUPS_PER_WORD, N)
    return nib & 0x3, nib >> 2


def compress_24(w: jax.Array, *, check: bool = True) -> tuple[jax.Array, jax.Array]:
    """Dense 2:4-sparse W[K, N] → (values[K/2, N] in W's dtype, meta[K/32, N] int32).

    check=True (needs concrete W, so not under jit) refuses a W that is not 2:4 with an error naming
    the first offending group. check=False is traceable; it keeps, per group, the first two
    non-zeros in row order and silently drops the rest.
    """
    K, N = _check_24_shape(w.shape)
    if check and isinstance(w, jax.core.Tracer):
        raise ValueError("compress_24(check=True) needs a concrete W; under jit pass check=False")
    if check and (msg := find_24_violation(w)) is not None:
        raise ValueError(msg)
    w_g = w.reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N)
    pos = jnp.arange(SPARSE24_GROUP, dtype=jnp.int32)[None, :, None]
    # Distinct scores: non-zeros first, then lower rows; the top two are the stored positions.
    score = (w_g != 0).astype(jnp.int32) * SPARSE24_GROUP + (SPARSE24_GROUP - 1 - pos)
    top = jnp.argsort(-score, axis=1)[:, :SPARSE24_KEEP, :].astype(jnp.int32)
    i0, i1 = jnp.min(top, axis=1), jnp.max(top, axis=1)
    v0 = jnp.take_along_axis(w_g, i0[:, None, :], axis=1)
    v1 = jnp.take_along_axis(w_g, i1[:, None, :], axis=1)
    values = jnp.concatenate([v0, v1], axis=1).reshape(K // 2, N)
    return values, pack_meta_24(i0, i1)


def decompress_24(values: jax.Array, meta: jax.Array) -> jax.Array:
    """(values[K/2, N], meta[K/32, N]) → dense W[K, N] in values' dtype; bit-exact inverse."""
    K2, N = values.shape
    K = 2 * K2
    _check_24_shape((K, N))
    if meta.shape != (K // 32, N):
        raise ValueError(f"meta shape {meta.shape} does not match values {values.shape}")
    i0, i1 = unpack_meta_24(meta)
    v_g = values.reshape(K // SPARSE24_GROUP, SPARSE24_KEEP, N)
    pos = jnp.arange(SPARSE24_GROUP, dtype=jnp.int32)[None, :, None]
    zero = jnp.zeros((), values.dtype)
    w_g = jnp.where(
        pos == i0[:, None, :], v_g[:, 0:1], jnp.where(pos == i1[:, None, :], v_g[:, 1:2], zero)
    )
    return w_g.reshape(K, N)


# The family names every format has (DESIGN §3): pack_<fmt> / unpack_<fmt>.
pack_24 = compress_24
unpack_24 = decompress_24


def quantize_sparse24_int4(
    w,
    group_size: int | None = 128,
    *,
    symmetric: bool = True,
    scale_dtype=jnp.float32,
    check: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """2:4-sparse W[K, N] → (qvalues[K/16, N] int32, meta[K/32, N], scales, zeros | None).

    compress_24, then quantize_int4 of the kept values along the compressed axis: the group size G
    counts compressed rows (one group spans 2·G dense rows), scales / zeros are [K/2/G, N]. Padding
    slots hold 0, which both int4 schemes represent exactly (z is integer valued).
    """
    values, meta = compress_24(w, check=check)
    qvalues, scales, zeros = quantize_int4(
        values, group_size, symmetric=symmetric, scale_dtype=scale_dtype
    )
    return qvalues, meta, scales, zeros


def dequantize_sparse24_int4(
    qvalues, meta, scales, zeros=None, *, group_size: int | None = None
) -> jax.Array:
    """Dense f32 W[K, N] from the int4+2:4 format: dequantize_int4 the values, then decompress."""
    return decompress_24(dequantize_int4(qvalues, scales, zeros, group_size=group_size), meta)
