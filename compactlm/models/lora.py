"""Adapters around any storage kind of linear: LoRA, rsLoRA, DoRA, PiSSA init; merge / unmerge.

For a linear y = x @ W (W [in, out], possibly a fused projection whose named parts are q / k / v
or gate / up), the adapter adds, on each targeted part p only,

    LoRA (Hu et al. 2021):      y_p = x W_p + s · drop(x) A_p B_p,      s = alpha / r
    rsLoRA (Kalajdzievski 2023): the same with s = alpha / sqrt(r)
    DoRA (Liu et al. 2024):     y_p = m_p / ‖W_p + s A_p B_p‖_c ⊙ (x W_p + s · drop(x) A_p B_p)

with A_p [in, r], B_p [r, out_p], ‖·‖_c the L2 norm of each output column (over `in`), m_p
[out_p] initialised to ‖W_p‖_c. As in DoRA §4.3 (and PEFT) the column norm is treated as a
constant in the backward (stop_gradient), which keeps its memory cost to one [in, out_p] matrix.
B starts at zero so ΔW = 0 (LoRA §4.1); A is kaiming-uniform(a = √5) as in PEFT, or N(0, 1/r²)
("gaussian", PEFT's std 1/r). PiSSA (Meng et al. 2024) instead sets A_p, B_p from the top-r SVD
of W_p (so s·A_p B_p is W_p's principal part) and replaces the base by the residual W_p − s A_p B_p,
which stays frozen. A fused projection's untargeted parts (k when only q, v are adapted) are
untouched, so an adapter on q is exactly a LoRA on an unfused Llama's q_proj.
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from compactlm.models.config import AdapterConfig


class LoRAB(nnx.LoRAParam):
    """The B factor [r, out]: its own type so LoRA+ can give it ratio × A's learning rate."""


class DoRAMagnitude(nnx.LoRAParam):
    """DoRA's per-output-column magnitude m [out]."""


def _einsum(x, w):
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)


def _column_norm(w: Float[Array, "I O"]) -> Float[Array, " O"]:
    return jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=0))


def _side_key(rngs: nnx.Rngs, i: int) -> jax.Array:
    """A key for adapter init that does not advance the params stream: the base weights of a
    model are the same with or without adapters (same seed), and the adapter still varies with
    the seed and the layer (the stream's current key and count)."""
    stream = rngs.params
    return jax.random.fold_in(jax.random.fold_in(stream.key[...], stream.count[...]), 0x10A + i)


class Adapter(nnx.Module):
    """The adapter of one linear: factors for each targeted part of its layout."""

    def __init__(
        self,
        base: nnx.Module,
        parts: tuple[str, ...],
        cfg: AdapterConfig,
        *,
        rngs: nnx.Rngs,
        param_dtype: jnp.dtype,
        in_axis: str | None = None,
        out_axis: str | None = None,
    ):
        if cfg.kind not in ("lora", "dora"):
            raise ValueError(f"adapter.kind={cfg.kind!r} builds no adapter")
        self.kind, self.parts = cfg.kind, tuple(parts)
        self.scale, self.dropout, self.init = cfg.scale, cfg.dropout, cfg.init
        self.rank = cfg.rank
        sizes = base.layout.sizes()
        d_in, r = base.in_features, cfg.rank
        for p in self.parts:
            if not 1 <= r <= min(d_in, sizes[p]):
                raise ValueError(
                    f"adapter.rank={r} is outside 1..min(d_in, d_out) = 1..{min(d_in, sizes[p])} "
                    f"for projection {p!r} ({d_in} → {sizes[p]})"
                )
        a, b, m = {}, {}, {}
        for i, p in enumerate(self.parts):
            key = _side_key(rngs, i)
            if cfg.init == "gaussian":
                a_init = jax.random.normal(key, (d_in, r), jnp.float32) / r
            else:  # kaiming-uniform(a=√5) on fan_in = d_in: bound = 1/sqrt(d_in); pissa overwrites
                bound = 1.0 / d_in**0.5
                a_init = jax.random.uniform(key, (d_in, r), jnp.float32, -bound, bound)
            a[p] = nnx.LoRAParam(
                a_init.astype(param_dtype), out_sharding=(in_axis, None), eager_sharding=False
            )
            b[p] = LoRAB(
                jnp.zeros((r, sizes[p]), param_dtype),
                out_sharding=(None, out_axis),
                eager_sharding=False,
            )
            if self.kind == "dora":
                m[p] = DoRAMagnitude(
                    jnp.ones((sizes[p],), param_dtype),
                    out_sharding=(out_axis,),
                    eager_sharding=False,
                )
        self.a, self.b = nnx.Dict(a), nnx.Dict(b)
        self.magnitude = nnx.Dict(m) if m else None
        self.init_from_base(base)

    def delta_weight(self, p: str) -> Float[Array, "I Op"]:
        """s · A_p B_p [in, out_p] in f32."""
        return self.scale * _einsum(self.a[p][...], self.b[p][...])

    def init_from_base(self, base: nnx.Module, w: Float[Array, "I O"] | None = None) -> None:
        """Set what depends on the base weight: PiSSA factors + residual, DoRA magnitudes.

        Called at construction and again after a real base weight is loaded (fine-tuning). w:
        the full-precision base weight (default: base.dense_weight()); PiSSA decomposes it
        before the residual is stored (and quantized, for a packed base: QPiSSA's order).
        """
        if self.init == "pissa":
            w_parts = base.layout.split(base.dense_weight() if w is None else w)
            for p in self.parts:
                u, s, vt = jnp.linalg.svd(w_parts[p], full_matrices=False)
                root = jnp.sqrt(s[: self.rank] / self.scale)  # s·A·B = U_r S_r V_r^T
                self.a[p][...] = (u[:, : self.rank] * root).astype(self.a[p][...].dtype)
                self.b[p][...] = (root[:, None] * vt[: self.rank]).astype(self.b[p][...].dtype)
                w_parts[p] = w_parts[p] - self.delta_weight(p)
            base.load_dense(base.layout.join(w_parts))
        if self.magnitude is not None:
            w_parts = base.layout.split(base.dense_weight())
            for p in self.parts:
                norm = _column_norm(w_parts[p] + self.delta_weight(p))
                self.magnitude[p][...] = norm.astype(self.magnitude[p][...].dtype)

    def __call__(self, base: nnx.Module, x, y, rng: jax.Array | None):
        """The adapted output from the base's output y (f32) and its input x."""
        x_drop = x
        if self.dropout and rng is not None:
            keep = jax.random.bernoulli(rng, 1.0 - self.dropout, x.shape)
            x_drop = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        y_parts = base.layout.split(y)
        w_parts = base.layout.split(base.dense_weight()) if self.magnitude is not None else None
        for p in self.parts:
            a = self.a[p][...].astype(x.dtype)
            b = self.b[p][...].astype(x.dtype)
            delta = self.scale * _einsum(_einsum(x_drop, a).astype(x.dtype), b)
            if self.magnitude is None:
                y_parts[p] = y_parts[p] + delta
            else:
                norm = jax.lax.stop_gradient(_column_norm(w_parts[p] + self.delta_weight(p)))
                gain = self.magnitude[p][...].astype(jnp.float32) / norm
                y_parts[p] = gain * (y_parts[p] + delta)
        return base.layout.join(y_parts)

    def merged_weight(self, base: nnx.Module) -> Float[Array, "I O"]:
        """W with the adapter folded in, [in, out] f32: exact for LoRA (W + s·A·B) and DoRA
        (m ⊙ (W + s·A·B) / ‖W + s·A·B‖_c)."""
        w_parts = base.layout.split(base.dense_weight())
        for p in self.parts:
            w = w_parts[p] + self.delta_weight(p)
            if self.magnitude is not None:
                w = w * (self.magnitude[p][...].astype(jnp.float32) / _column_norm(w))
            w_parts[p] = w
        return base.layout.join(w_parts)

    def unmerged_weight(self, merged: Float[Array, "I O"], layout) -> Float[Array, "I O"]:
        """Inverse of merged_weight for LoRA: W = W' − s·A·B per part (DoRA's m/‖·‖ scaling
        is not invertible without the original W, so it is refused)."""
        if self.magnitude is not None:
            raise ValueError("unmerge is defined for LoRA only; DoRA merges are not invertible")
        parts = layout.split(merged)
        for p in self.parts:
            parts[p] = parts[p] - self.delta_weight(p)
        return layout.join(parts)

    def num_params(self) -> int:
        return sum(
            int(v[...].size)
            for d in (self.a, self.b, self.magnitude)
            if d is not None
            for v in d.values()
        )
