"""Dense storage: `dense_matmul` (f32 accumulation, a copy-free custom VJP) and `Linear`.

Also `StorageLinear`, the small protocol every storage kind of linear layer follows (dense here,
packed 4-bit / 2:4 in models/quantized.py), so that models/linear.py can swap them by config and
adapters (models/lora.py) can wrap any of them.
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float


def param_init(std: float, axes: tuple[str | None, ...]) -> nnx.Initializer:
    """Normal(0, std) initializer carrying mesh-axis names for nnx.get_partition_spec.

    eager_sharding=False: flax >= 0.12 otherwise shards annotated variables at creation and then
    *requires* a mesh context, so a plain single-device `Transformer(cfg, rngs=...)` would fail.
    Sharded creation is `train.step.init_state` (jit with the annotations' out_shardings).
    """
    return nnx.with_partitioning(nnx.initializers.normal(stddev=std), axes, eager_sharding=False)


_NO_BATCH: tuple[tuple[()], tuple[()]] = ((), ())


@jax.custom_vjp
def dense_matmul(x: Float[Array, "... I"], w: Float[Array, "I O"]) -> Float[Array, "... O"]:
    """x @ w with f32 accumulation, and a backward that XLA:CPU runs without layout copies.

    Same values as `einsum("...i,io->...o", preferred_element_type=f32)`; only the backward's
    dot_generals differ. Autodiff of the einsum contracts dW over the two leading axes of x
    [B, T, I] and dy [B, T, O] and transposes the result, and XLA:CPU materialises
    dy^T [O, B·T] (a `copy_bitcast_fusion`) for it, once per linear per step. Here x and dy are
    flattened to [M, I] / [M, O] and dW = dot_general(x, dy, contracting dim 0 of both) comes out
    [I, O] directly, which XLA's CPU dot takes without a copy (16 fewer copy fusions in the tiny
    step). Measured `tiny` train step (B16×T256, f32, unrolled, 2-core Zen 4, variants compiled in
    one process and alternated step by step, paired median ratio): 1.145×, 1.139×, 1.136×
    (30, 40, 30 rounds; bf16 compute 1.09×) vs the autodiffed einsum; saving a pre-transposed
    x^T in the forward instead gave 1.12×, computing (dy^T x)^T 1.11× (docs/benchmarks.md).
    """
    return jnp.einsum("...i,io->...o", x, w, preferred_element_type=jnp.float32)


def _dense_matmul_fwd(x, w):
    return dense_matmul(x, w), (x, w)


def _dense_matmul_bwd(res, dy):
    x, w = res
    x_MI = x.reshape(-1, x.shape[-1])
    dy_MO = dy.reshape(-1, dy.shape[-1])
    # Mixed dtypes (f32 dy, bf16 operands) as in jax's own transpose rule: f32 products.
    dx_MI = jax.lax.dot_general(
        dy_MO, w, (((1,), (1,)), _NO_BATCH), preferred_element_type=jnp.float32
    )
    dw_IO = jax.lax.dot_general(
        x_MI, dy_MO, (((0,), (0,)), _NO_BATCH), preferred_element_type=jnp.float32
    )
    return dx_MI.reshape(x.shape).astype(x.dtype), dw_IO.astype(w.dtype)


dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


class StorageLinear(nnx.Module):
    """What every storage kind of linear shares: y = x @ W (+ the adapter's correction).

    A storage class sets in_features, out_features, compute_dtype, out_dtype, `layout` (the
    named column views of a fused projection, models/linear.py) and `adapter` (None or a
    models/lora.py adapter), and implements `matmul(x)` (f32-accumulated x @ W),
    `dense_weight()` (W [in, out] in f32) and `load_dense(w)` (store a dense W in its format).
    """

    adapter: nnx.Module | None

    def _init_storage(self, in_features, out_features, compute_dtype, out_dtype, layout) -> None:
        """The attributes every storage class sets; the adapter slot stays None until
        make_linear attaches a models/lora.py Adapter (nnx.data: it will hold a Module)."""
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.out_dtype = compute_dtype, out_dtype
        self.layout, self.adapter = layout, nnx.data(None)

    def _check_shape(self, w) -> None:
        if tuple(w.shape) != (self.in_features, self.out_features):
            raise ValueError(f"weight shape {w.shape} != {(self.in_features, self.out_features)}")

    def __call__(
        self, x: Float[Array, "... I"], rng: jax.Array | None = None
    ) -> Float[Array, "... O"]:
        x = x.astype(self.compute_dtype)
        y = self.matmul(x)
        if self.adapter is not None:
            y = self.adapter(self, x, y, rng)
        return y.astype(self.out_dtype)


class Linear(StorageLinear):
    """Dense y = x @ kernel, no bias; kernel [in, out] (Flax / DESIGN §3 orientation).

    The product goes through `dense_matmul`, whose custom VJP avoids XLA:CPU's transposed copy
    of dy for every weight gradient (1.14× on the tiny train step, see its docstring).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        param_dtype: jnp.dtype,
        compute_dtype: jnp.dtype,
        out_dtype: jnp.dtype,
        init_std: float,
        kernel_axes: tuple[str | None, str | None],
        rngs: nnx.Rngs,
        layout=None,
    ):
        self._init_storage(in_features, out_features, compute_dtype, out_dtype, layout)
        init = param_init(init_std, kernel_axes)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype))

    def matmul(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        # f32 accumulation even for bf16 operands (bf16 sums lose ~3 digits at K=4096).
        return dense_matmul(x, self.kernel[...].astype(self.compute_dtype))

    def dense_weight(self) -> Float[Array, "I O"]:
        return self.kernel[...].astype(jnp.float32)

    def load_dense(self, w: Float[Array, "I O"]) -> None:
        self._check_shape(w)
        self.kernel[...] = jnp.asarray(w, self.kernel[...].dtype)
