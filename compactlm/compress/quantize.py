"""Post-training weight quantization of one W[K, N]: grids, RTN, GPTQ and AWQ-style scaling.

A *grid* is one storage format at a bit width (``kernels/packing.py`` holds the contracts):

- ``int4`` symmetric absmax: ``s = absmax / (2^(b−1) − 1)``, ``q = clip(round(w / s), −2^(b−1),
  2^(b−1) − 1)``, ``w = q · s``;
- ``int4_affine`` min-max: ``s = (max − min) / (2^b − 1)`` over the range widened to hold 0,
  ``z = clip(round(−min / s), 0, 2^b − 1)``, ``w = (q − z) · s``;
- ``nf4`` / ``fp4``: nearest entry of a 16-value code book times the block absmax.

Bits 3 and 4 live in the int4 container (a 3-bit code is a nibble that uses 8 of its 16 values,
so it saves no bytes: the size report says so); 8 bits is a simulated (fake-quantized) grid with
no packed format. At b = 4 the formulas are exactly ``packing.quantize_int4`` /
``quantize_codebook`` (a test holds them bit-equal), so a ``QuantizedWeight`` packs into the
kernels' operands.

Groups run along K (G rows per scale, G ∈ {32, 64, 128, 256} or per channel G = K).

- RTN: round to nearest, each group's scale from its own weights.
- GPTQ (Frantar et al. 2022): the OBS sweep of ``obs.py`` with the grid as the rounding rule;
  a group's scale is fitted when the sweep reaches its first row (on the already-updated
  weights, as the reference does); act-order (descending diag H) with static groups (scales
  from the original W, since the packed format keeps groups contiguous in the original K order).
  An optional ``mask`` of kept weights forces the others to exactly 0 (int4 + 2:4).
- AWQ (Lin et al. 2024): per-input scales ``s = mean|x|^α`` (normalised), ``W' = diag(s) W``
  with ``1/s`` folded into whatever produces x, α searched on a grid to minimise the layer's
  output error ``tr(ΔWᵀ H ΔW)`` with ``ΔW = W − diag(s)⁻¹ Q(diag(s) W)``. Exact before rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

from compactlm.compress import obs
from compactlm.kernels import packing

QuantFormat = Literal["int4", "int4_affine", "nf4", "fp4"]
QUANT_FORMATS: tuple[str, ...] = ("int4", "int4_affine", "nf4", "fp4")
QUANT_METHODS: tuple[str, ...] = ("rtn", "gptq", "awq")
# Bit widths each format supports; only those ≤ 4 have packed storage (the int4 container).
FORMAT_BITS: dict[str, tuple[int, ...]] = {
    "int4": (3, 4, 8),
    "int4_affine": (3, 4, 8),
    "nf4": (4,),
    "fp4": (4,),
}
PACKED_BITS = (3, 4)
# AWQ's search grid: α = i / 20, i = 0 … 19 (the llm-awq reference's n_grid).
AWQ_GRID = 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """What `compactlm quantize` (and `prune quantize.*`) runs on every linear of the model."""

    # "rtn" round-to-nearest; "gptq" OBS error compensation (needs calibration); "awq"
    # activation-aware per-channel scaling, then RTN (needs calibration). "none": off (the
    # `prune` command's quantize section until a quantize.* key is given).
    method: Literal["rtn", "gptq", "awq", "none"] = "rtn"
    # Storage format of the codes (kernels/packing.py); int4_affine = int4 with zero points.
    format: QuantFormat = "int4"
    # Code width. 4 everywhere; 3 for int4 / int4_affine (stored in the int4 container, no bytes
    # saved); 8 is simulated only (no packed format, so not exportable).
    bits: int = 4
    # Rows of K per scale: 32 / 64 / 128 / 256, or 0 for one scale per output channel. 128 is
    # GPTQ's / AutoGPTQ's default for int4; QLoRA uses 64 for NF4.
    group_size: int = 128
    # GPTQ: process inputs in order of decreasing H[k, k] (the reference's --act-order);
    # groups are then static (fitted on the original W) to keep the packed layout.
    act_order: bool = False
    # GPTQ: dampening λ as a fraction of mean diag H (the paper's 1 %).
    damp: float = obs.DEFAULT_DAMP
    # GPTQ: rows per lazy-update block (the paper's B = 128).
    block_size: int = obs.DEFAULT_BLOCK
    # The dtype scales are rounded to before the codes are chosen: float16 makes every scale
    # an f16 value (GGUF's Q4_0 / Q4_1 blocks store f16 scales: `export format=gguf` then keeps
    # the codes and scales bit for bit; llama.cpp's own quantizer rounds d to f16 the same way).
    # float32: the scales as computed.
    scale_dtype: Literal["float32", "float16"] = "float32"
    # nf4 / fp4 export: store the per-block absmax constants quantized again (QLoRA §3 double
    # quantization: int8 codes in flat blocks of 256, one f32 scale per block, an f32 mean);
    # 4.127 instead of 4.5 bits/weight at group_size=64. Off: the kernels' plain f32 absmax.
    double_quant: bool = False

    def __post_init__(self) -> None:
        check_quant_args(self.method, self.format, self.bits, self.group_size)
        if not self.damp > 0:
            raise ValueError(f"quantize damp must be > 0, got {self.damp}")
        if self.block_size < 1:
            raise ValueError(f"quantize block_size must be >= 1, got {self.block_size}")


def check_quant_args(method: str, format: str, bits: int, group_size: int) -> None:
    """One-line errors naming the valid choices (the CLI turns them into exit 2)."""
    if method not in (*QUANT_METHODS, "none"):
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(QUANT_METHODS)}")
    if format not in QUANT_FORMATS:
        raise ValueError(f"unknown format {format!r}; valid formats: {', '.join(QUANT_FORMATS)}")
    if bits not in FORMAT_BITS[format]:
        raise ValueError(
            f"bits={bits} is not supported by format {format!r}; valid: "
            f"{', '.join(map(str, FORMAT_BITS[format]))}"
        )
    if group_size != 0 and group_size not in packing.GROUP_SIZES:
        raise ValueError(
            f"group_size={group_size} is not supported; valid: "
            f"{', '.join(map(str, packing.GROUP_SIZES))}, or 0 for per-channel"
        )


def resolve_group(k: int, group_size: int) -> int:
    """Rows per group for a K-row matrix (0 → K); the group must divide K."""
    g = k if group_size in (0, None) else group_size
    if k % g:
        valid = [str(v) for v in packing.GROUP_SIZES if k % v == 0] + ["0 (per channel)"]
        raise ValueError(
            f"group_size={group_size} does not divide K={k} (the layer's inputs); valid for "
            f"this model: {', '.join(valid)}"
        )
    return g


# ----------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class Grid:
    """One format at one bit width: fit a group's scale (and zero), encode, decode."""

    format: QuantFormat = "int4"
    bits: int = 4
    # Scales (absmax) rounded to this dtype before any code is chosen (QuantConfig.scale_dtype).
    scale_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise ValueError(f"unknown format {self.format!r}; valid: {', '.join(QUANT_FORMATS)}")
        if self.bits not in FORMAT_BITS[self.format]:
            raise ValueError(f"bits={self.bits} not supported by format {self.format!r}")

    @property
    def signed(self) -> bool:
        return self.format == "int4"

    @property
    def has_zero(self) -> bool:
        return self.format == "int4_affine"

    def fit(self, w_gn) -> tuple[np.ndarray, np.ndarray | None]:
        """Scale [N] (and zero point [N]) of one group of rows ``w[G, N]``.

        Written with jnp in packing.py's exact expressions, so b = 4 is bit-equal to it (XLA
        rewrites a division by a constant into a reciprocal multiply; NumPy would not).
        """
        w = jnp.asarray(np.asarray(w_gn, np.float32))
        if self.format in ("nf4", "fp4"):
            return self._rounded(jnp.max(jnp.abs(w), axis=0)), None
        if self.format == "int4":
            s = jnp.max(jnp.abs(w), axis=0) / float(2 ** (self.bits - 1) - 1)
            return self._rounded(jnp.where(s == 0, 1.0, s).astype(jnp.float32)), None
        lo = jnp.minimum(jnp.min(w, axis=0), 0.0)
        hi = jnp.maximum(jnp.max(w, axis=0), 0.0)
        s = (hi - lo) / float(2**self.bits - 1)
        s = jnp.asarray(self._rounded(jnp.where(s == 0, 1.0, s).astype(jnp.float32)))
        z = jnp.clip(jnp.round(-lo / s), 0, 2**self.bits - 1)
        return np.asarray(s), np.asarray(z, np.float32)

    def _rounded(self, s) -> np.ndarray:
        """f32 scales, rounded through scale_dtype first (float16: every scale is an f16 value,
        so GGUF's Q4_0 / Q4_1 hold them as they are); the codes are then chosen on them."""
        s = np.asarray(s, np.float32)
        if self.scale_dtype == "float16":
            s16 = s.astype(np.float16)
            s = np.where(np.isfinite(s16) & (s16 > 0), s16, s).astype(np.float32)
        return s

    def encode(self, w, scale, zero=None) -> np.ndarray:
        """Integer codes of ``w[..., N]`` on the grid of (scale, zero) [N]; int16."""
        w = np.asarray(w, np.float32)
        if self.format in ("nf4", "fp4"):
            am = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
            book = packing.CODEBOOKS[self.format]
            return np.argmin(np.abs((w / am)[..., None] - book), axis=-1).astype(np.int16)
        q = np.round(w / scale)
        if self.format == "int4":
            half = 2 ** (self.bits - 1)
            return np.clip(q, -half, half - 1).astype(np.int16)
        return np.clip(q + zero, 0, 2**self.bits - 1).astype(np.int16)

    def decode(self, codes, scale, zero=None) -> np.ndarray:
        if self.format in ("nf4", "fp4"):
            return packing.CODEBOOKS[self.format][codes] * np.asarray(scale, np.float32)
        c = np.asarray(codes, np.float32)
        if zero is not None:
            c = c - zero
        return c * np.asarray(scale, np.float32)

    def round(self, w, scale, zero=None) -> np.ndarray:
        """``w`` moved to the nearest grid point (fake quantization), float32."""
        return self.decode(self.encode(w, scale, zero), scale, zero)


class QuantizedWeight(NamedTuple):
    """A quantized W[K, N]: codes on a grid, per-group scales (absmax for NF4 / FP4), zeros."""

    codes: np.ndarray  # [K, N] int16: signed for int4, unsigned otherwise
    scales: np.ndarray  # [K/G, N] float32
    zeros: np.ndarray | None  # [K/G, N] float32 (int4_affine only; integer valued)
    format: str
    bits: int

    @property
    def group_size(self) -> int:
        return self.codes.shape[0] // self.scales.shape[0]

    def dequantize(self) -> np.ndarray:
        """W as float32 [K, N]: what every kernel computes with."""
        g = self.group_size
        s = np.repeat(self.scales, g, axis=0)
        z = None if self.zeros is None else np.repeat(self.zeros, g, axis=0)
        return Grid(self.format, self.bits).decode(self.codes, s, z)

    def pack(self) -> dict[str, np.ndarray]:
        """The kernels' operands: qweight [K/8, N] int32, scales (and zeros) [K/G, N] f32."""
        if self.bits not in PACKED_BITS:
            raise ValueError(
                f"bits={self.bits} has no packed storage: the int4 container holds codes of at "
                f"most 4 bits (valid: {', '.join(map(str, PACKED_BITS))})"
            )
        out = {"qweight": np.asarray(packing.pack_int4(self.codes.astype(np.int32)))}
        out["scales"] = self.scales.astype(np.float32)
        if self.zeros is not None:
            out["zeros"] = self.zeros.astype(np.float32)
        return out


def _fit_all(w: np.ndarray, grid: Grid, g: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scales (and zeros) [K/G, N] of every group of W[K, N]."""
    fits = [grid.fit(w[i : i + g]) for i in range(0, w.shape[0], g)]
    scales = np.stack([f[0] for f in fits])
    zeros = None if fits[0][1] is None else np.stack([f[1] for f in fits])
    return scales, zeros


def _codes(w: np.ndarray, grid: Grid, scales, zeros, g: int) -> np.ndarray:
    s = np.repeat(scales, g, axis=0)
    z = None if zeros is None else np.repeat(zeros, g, axis=0)
    return grid.encode(w, s, z)


# ----------------------------------------------------------------------------- RTN


def rtn(w, grid: Grid, group_size: int = 128) -> QuantizedWeight:
    """Round-to-nearest: each group's scale from its own weights, every weight rounded."""
    w = np.asarray(w, np.float32)
    g = resolve_group(w.shape[0], group_size)
    scales, zeros = _fit_all(w, grid, g)
    return QuantizedWeight(_codes(w, grid, scales, zeros, g), scales, zeros, grid.format, grid.bits)


# ----------------------------------------------------------------------------- GPTQ


def gptq(
    w,
    h,
    grid: Grid,
    group_size: int = 128,
    *,
    act_order: bool = False,
    damp: float = obs.DEFAULT_DAMP,
    block_size: int = obs.DEFAULT_BLOCK,
    mask=None,
) -> QuantizedWeight:
    """GPTQ of W[K, N] given H = XᵀX [K, K]; ``mask`` [K, N] bool keeps weights (others → 0)."""
    w0 = np.asarray(w, np.float32)
    k, n = w0.shape
    g = resolve_group(k, group_size)
    keep = None if mask is None else np.asarray(mask, bool)
    if keep is not None and keep.shape != (k, n):
        raise ValueError(f"mask shape {keep.shape} does not match W {w0.shape}")
    wd, hd = obs.prepare_hessian(w0 if keep is None else w0 * keep, h, damp=damp)
    perm = np.argsort(-np.diag(hd), kind="stable") if act_order else np.arange(k)
    wd, hd = wd[perm], hd[np.ix_(perm, perm)]
    keep_p = None if keep is None else keep[perm]
    u = obs.inverse_cholesky(hd)

    n_groups = k // g
    scales = np.zeros((n_groups, n), np.float32)
    zeros = np.zeros((n_groups, n), np.float32) if grid.has_zero else None
    static = act_order or g == k
    if static:
        # Per channel (one group) or act-order: fitted once on the original W (dead rows zeroed).
        w_fit = wd[np.argsort(perm)]
        scales[:], z = _fit_all(w_fit, grid, g)
        if zeros is not None:
            zeros[:] = z
    elif g > block_size:
        block_size = g  # a group must be fitted on rows that all carry their latest updates
    elif block_size % g:
        raise ValueError(f"GPTQ block_size={block_size} must be a multiple of group_size={g}")

    def fix(kk: int, i: int, w_blk: np.ndarray, d_blk: np.ndarray) -> np.ndarray:
        grp = perm[kk] // g
        if not static and kk % g == 0:
            rows = w_blk[i : i + g]
            if keep_p is not None:
                rows = rows * keep_p[kk : kk + g]
            scales[grp], z = grid.fit(rows)
            if zeros is not None:
                zeros[grp] = z
        q = grid.round(w_blk[i], scales[grp], None if zeros is None else zeros[grp])
        return q if keep_p is None else np.where(keep_p[kk], q, 0.0)

    q = obs.obs_sweep(wd, u, fix, block_size=block_size)[np.argsort(perm)]
    # Ŵ is on the grid already (pruned entries are 0, representable on every grid), so encoding
    # it again recovers the codes exactly.
    return QuantizedWeight(_codes(q, grid, scales, zeros, g), scales, zeros, grid.format, grid.bits)


# ----------------------------------------------------------------------------- AWQ


class AwqResult(NamedTuple):
    """Per-input scales s [K] (fold 1/s into the producer of x), the chosen α, Q(diag(s) W)."""

    scales: np.ndarray
    alpha: float
    quantized: QuantizedWeight


def layer_error(w, w_hat, h) -> float:
    """‖X W − X Ŵ‖² / n tokens = tr(ΔWᵀ H ΔW) for H = XᵀX / n."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.einsum("kn,kj,jn->", d, np.asarray(h, np.float64), d))


def awq_input_scales(act_mean_abs, alpha: float) -> np.ndarray:
    """llm-awq's ``x_mean^α`` normalised by sqrt(max · min), clamped away from zero."""
    s = np.maximum(np.asarray(act_mean_abs, np.float64), 1e-8) ** alpha
    s = np.maximum(s, 1e-4)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def awq(
    w, h, act_mean_abs, grid: Grid, group_size: int = 128, *, n_grid: int = AWQ_GRID
) -> AwqResult:
    """Search α ∈ {0, 1/n_grid, …}: minimise the layer error of diag(s)⁻¹ RTN(diag(s) W)."""
    w = np.asarray(w, np.float32)
    best = None
    for i in range(n_grid):
        alpha = i / n_grid
        s = awq_input_scales(act_mean_abs, alpha)
        qw = rtn(w * s[:, None], grid, group_size)
        err = layer_error(w, qw.dequantize() / s[:, None], h)
        if best is None or err < best[0]:
            best = (err, AwqResult(s, alpha, qw))
    return best[1]
