"""Frozen packed linears calling the kernels: int4 / NF4 / FP4 (QLoRA bases), 2:4 and int4+2:4.

Data (DESIGN §3, kernels/packing.py): `qweight[K/8, N]` int32 codes, `scales[K/G, N]` (int4
scales or NF4 / FP4 absmax). With double quantization (QLoRA §3, nf4 / fp4 only) the absmax
constants are stored again as int8 codes in flat blocks of 256 with one f32 scale per block and an
f32 mean, and are dequantized on the fly in every forward (4.127 bits per parameter at G = 64
instead of 4.5). All of it is `Frozen` state: never trained, never in the optimizer; gradients
reach x through `int4_matmul`'s custom VJP (Triton on CUDA, the jnp reference elsewhere).
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from compactlm.kernels import packing
from compactlm.kernels.int4_matmul import int4_matmul
from compactlm.kernels.sparse24_matmul import sparse24_int4_matmul, sparse24_matmul
from compactlm.models.config import QUANTIZED_FORMATS, Frozen
from compactlm.models.dense import StorageLinear


class QuantizedLinear(StorageLinear):
    """y = x @ dequantize(codes) with the weight held packed; `format` ∈ int4 | nf4 | fp4."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        format: str,
        group_size: int,
        double_quant: bool,
        compute_dtype: jnp.dtype,
        zero_point: bool = False,
        out_dtype: jnp.dtype,
        init_std: float,
        kernel_axes: tuple[str | None, str | None],
        rngs: nnx.Rngs,
        layout=None,
    ):
        if format not in QUANTIZED_FORMATS:
            raise ValueError(f"format {format!r}; valid: {', '.join(QUANTIZED_FORMATS)}")
        if zero_point and format != "int4":
            raise ValueError(f"zero points (affine int4) exist only for int4, not {format!r}")
        group_size = group_size or in_features  # 0: one group per output channel
        if in_features % group_size:
            raise ValueError(
                f"in_features={in_features} is not divisible by the {format} block size "
                f"{group_size} (model.quant_group_size)"
            )
        self._init_storage(in_features, out_features, compute_dtype, out_dtype, layout)
        self.format, self.group_size = format, group_size
        self.zero_point = zero_point  # affine int4 (w = (q − z)·s, unsigned codes): `zeros`
        self.double_quant = double_quant and format != "int4"
        self.kernel_axes = kernel_axes
        # A random base (from-scratch construction, shapes for checkpoints); a real base is
        # written with load_dense.
        w = init_std * jax.random.normal(rngs.params(), (in_features, out_features), jnp.float32)
        self._store(w)

    def _frozen(self, value, axes) -> Frozen:
        return Frozen(value, out_sharding=axes, eager_sharding=False)

    def _store(self, w: Float[Array, "I O"]) -> None:
        """Quantize w and (re)write the frozen storage; values in place once it exists, so
        the sharding metadata set at construction is kept."""
        qweight, scales, zeros = packing.quantize(
            jnp.asarray(w, jnp.float32),
            self.format,
            self.group_size,
            symmetric=not self.zero_point,
        )
        stored = {"qweight": (qweight, self.kernel_axes)}
        if self.zero_point:
            stored["zeros"] = (zeros, self.kernel_axes)
        if self.double_quant:
            dq = packing.double_quantize(scales)
            stored |= {
                "absmax_codes": (dq.codes, self.kernel_axes),
                "absmax_scales": (dq.scales, (None,)),
                "absmax_mean": (dq.mean, ()),
            }
        else:
            stored["scales"] = (scales, self.kernel_axes)
        for name, (value, axes) in stored.items():
            if isinstance(getattr(self, name, None), Frozen):
                getattr(self, name)[...] = value
            else:
                setattr(self, name, self._frozen(value, axes))

    def load_dense(self, w: Float[Array, "I O"]) -> None:
        """Quantize a dense [in, out] weight into this layer's format (QLoRA: at load time)."""
        self._check_shape(w)
        self._store(w)

    def block_scales(self) -> Float[Array, "KG O"]:
        """The per-group scales / absmax in f32 (double-dequantized when stored that way)."""
        if self.double_quant:
            dq = packing.DoubleQuantized(
                self.absmax_codes[...], self.absmax_scales[...], self.absmax_mean[...]
            )
            return packing.double_dequantize(dq)
        return self.scales[...].astype(jnp.float32)

    def _zeros(self):
        return self.zeros[...] if self.zero_point else None

    def matmul(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        return int4_matmul(
            x,
            self.qweight[...],
            self.block_scales(),
            self._zeros(),
            format=self.format,
            group_size=self.group_size,
        ).astype(jnp.float32)

    def dense_weight(self) -> Float[Array, "I O"]:
        return packing.dequantize(
            self.qweight[...],
            self.block_scales(),
            self._zeros(),
            format=self.format,
            group_size=self.group_size,
        )

    def bits_per_parameter(self) -> float:
        return packing.bits_per_parameter(
            self.format,
            self.group_size,
            affine=self.zero_point,
            double_quant=self.double_quant,
            shape=(self.in_features, self.out_features),
        )


class Sparse24Linear(StorageLinear):
    """y = x @ W with W 2:4-sparse along K, held compressed; `quantized` = the int4+2:4 variant.

    Data (kernels/packing.py): `values[K/2, N]` (param dtype) and `meta[K/32, N]` int32, or for
    int4+2:4 `qvalues[K/16, N]` int32 + `meta` + `scales` (+ `zeros`) `[K/2/G, N]`, where the
    group size G counts *kept* rows (one group spans 2·G dense rows; 0 = per channel). Built by
    `compactlm prune` from a trained run; constructed from scratch (checkpoint shapes) it holds
    a magnitude-pruned random W. Calls `sparse24_matmul` / `sparse24_int4_matmul` (impl=auto).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        quantized: bool,
        group_size: int,
        param_dtype: jnp.dtype,
        compute_dtype: jnp.dtype,
        out_dtype: jnp.dtype,
        init_std: float,
        kernel_axes: tuple[str | None, str | None],
        rngs: nnx.Rngs,
        layout=None,
        zero_point: bool = False,
    ):
        if in_features % 32:
            raise ValueError(
                f"in_features={in_features}: 2:4 storage needs K % 32 == 0 (one int32 of "
                "metadata covers 32 rows)"
            )
        self._init_storage(in_features, out_features, compute_dtype, out_dtype, layout)
        self.quantized, self.zero_point = quantized, zero_point and quantized
        self.group_size = (group_size or in_features // 2) if quantized else 0
        if quantized and (in_features // 2) % self.group_size:
            raise ValueError(
                f"in_features={in_features}: the {in_features // 2} kept rows are not divisible by "
                f"the int4 group size {self.group_size} (model.quant_group_size)"
            )
        self.param_dtype, self.kernel_axes = param_dtype, kernel_axes
        w = init_std * jax.random.normal(rngs.params(), (in_features, out_features), jnp.float32)
        self._store(packing.mask_24_magnitude(w))

    def _store(self, w: Float[Array, "I O"]) -> None:
        values, meta = packing.compress_24(jnp.asarray(w, jnp.float32), check=False)
        if self.quantized:
            qvalues, scales, zeros = packing.quantize_int4(
                values, self.group_size, symmetric=not self.zero_point
            )
            stored = {"qvalues": qvalues, "meta": meta, "scales": scales}
            if self.zero_point:
                stored["zeros"] = zeros
        else:
            stored = {"values": values.astype(self.param_dtype), "meta": meta}
        for name, value in stored.items():
            if isinstance(getattr(self, name, None), Frozen):
                getattr(self, name)[...] = value
            else:
                setattr(self, name, Frozen(value, out_sharding=self.kernel_axes,
                                           eager_sharding=False))  # fmt: skip

    def load_dense(self, w: Float[Array, "I O"]) -> None:
        """Store a dense W that is already 2:4 sparse along K (refused otherwise)."""
        self._check_shape(w)
        if (msg := packing.find_24_violation(w)) is not None:
            raise ValueError(msg)
        self._store(w)

    def matmul(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        if self.quantized:
            zeros = self.zeros[...] if self.zero_point else None
            y = sparse24_int4_matmul(
                x, self.qvalues[...], self.meta[...], self.scales[...].astype(jnp.float32),
                zeros, group_size=self.group_size, out_dtype=jnp.float32,
            )  # fmt: skip
        else:
            values = self.values[...].astype(x.dtype)  # the kernels take W in x's dtype
            y = sparse24_matmul(x, values, self.meta[...], out_dtype=jnp.float32)
        return y

    def dense_weight(self) -> Float[Array, "I O"]:
        if self.quantized:
            zeros = self.zeros[...] if self.zero_point else None
            return packing.dequantize_sparse24_int4(
                self.qvalues[...], self.meta[...], self.scales[...], zeros,
                group_size=self.group_size,
            )  # fmt: skip
        return packing.decompress_24(self.values[...], self.meta[...]).astype(jnp.float32)

    def bits_per_parameter(self) -> float:
        k, n = self.in_features, self.out_features
        names = ("qvalues", "meta", "scales", "zeros") if self.quantized else ("values", "meta")
        nbytes = sum(getattr(self, a)[...].nbytes for a in names if hasattr(self, a))
        return 8 * nbytes / (k * n)
