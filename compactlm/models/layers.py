"""Decoder building blocks: the linear factory, RMSNorm, RoPE, GQA attention, SwiGLU MLP."""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from compactlm.models.attention import blocked_causal_attention

if TYPE_CHECKING:
    from compactlm.models.config import ModelConfig


def param_init(std: float, axes: tuple[str | None, ...]) -> nnx.Initializer:
    """Normal(0, std) initializer carrying mesh-axis names for nnx.get_partition_spec.

    eager_sharding=False: flax >= 0.12 otherwise shards annotated variables at creation and then
    *requires* a mesh context, so a plain single-device `Transformer(cfg, rngs=...)` would fail.
    Sharded creation goes through `create_sharded_model` (jit + with_sharding_constraint).
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


class Linear(nnx.Module):
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
    ):
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.out_dtype = compute_dtype, out_dtype
        init = param_init(init_std, kernel_axes)
        self.kernel = nnx.Param(init(rngs.params(), (in_features, out_features), param_dtype))

    def __call__(self, x: Float[Array, "... I"]) -> Float[Array, "... O"]:
        # f32 accumulation even for bf16 operands (bf16 sums lose ~3 digits at K=4096).
        y = dense_matmul(x.astype(self.compute_dtype), self.kernel[...].astype(self.compute_dtype))
        return y.astype(self.out_dtype)


def make_linear(
    in_features: int,
    out_features: int,
    *,
    cfg: ModelConfig,
    rngs: nnx.Rngs,
    kernel_axes: tuple[str | None, str | None],
    init_std: float | None = None,
    out_dtype: str | None = None,
) -> nnx.Module:
    """THE factory for every linear layer of the model; `cfg.weight_format` picks the kind.

    kernel_axes names the mesh axes of kernel [in, out]; init_std defaults to cfg.init_std;
    out_dtype defaults to cfg.compute_dtype (the LM head asks for float32 logits).
    """
    fmt = cfg.weight_format
    if fmt == "dense":
        return Linear(
            in_features,
            out_features,
            param_dtype=jnp.dtype(cfg.param_dtype),
            compute_dtype=jnp.dtype(cfg.compute_dtype),
            out_dtype=jnp.dtype(out_dtype or cfg.compute_dtype),
            init_std=cfg.init_std if init_std is None else init_std,
            kernel_axes=kernel_axes,
            rngs=rngs,
        )
    from compactlm.models.config import STORAGE_FORMATS

    if fmt not in STORAGE_FORMATS:
        valid = ", ".join(STORAGE_FORMATS)
        raise ValueError(f"unknown weight_format {fmt!r}; valid formats: {valid}")
    raise ValueError(f"weight_format {fmt!r} cannot be built by make_linear yet")


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in f32, learned scale init 1."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, compute_dtype: jnp.dtype):
        self.eps, self.compute_dtype = eps, compute_dtype
        self.scale = nnx.Param(
            jnp.ones((dim,), param_dtype), out_sharding=(None,), eager_sharding=False
        )

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        # f32 statistics: mean of squares in bf16 has 8 mantissa bits, too coarse for 1/rms.
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv_rms * self.scale[...].astype(jnp.float32)).astype(self.compute_dtype)


def rope_sin_cos(
    positions_BT: Int[Array, "B T"], head_dim: int, theta: float
) -> tuple[Float[Array, "B T H2"], Float[Array, "B T H2"]]:
    """sin/cos of position * theta^(-2j/H), j < H/2, in f32 — computed once per forward pass.

    Computed from the positions rather than a stored [max_seq_len, H/2] table: it costs B*T*H
    transcendentals per forward (nothing next to the matmuls), keeps no non-parameter state in the
    model's checkpoint, and works for any position (decode, packed sequences).
    """
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angle), jnp.cos(angle)


def apply_rope(
    x_BTNH: Float[Array, "B T N H"],
    sin_BTH2: Float[Array, "B T H2"],
    cos_BTH2: Float[Array, "B T H2"],
) -> Float[Array, "B T N H"]:
    """Rotary embedding (Su et al. 2021), rotate-half layout (GPT-NeoX / HF Llama).

    Pair j is (x[j], x[j + H/2]), i.e. the complex number x[j] + i·x[j + H/2], multiplied by
    exp(i·pos·theta^(-2j/H)). (Meta's original Llama interleaves pairs (x[2j], x[2j+1]); the two
    differ only by a fixed permutation of the q/k projection columns.)
    """
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_BTH2[:, :, None, :], cos_BTH2[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNH.dtype)


def resolve_attention_impl(impl: str, dtype: jnp.dtype, head_dim: int) -> str:
    """Map cfg.attention_impl to the kernel that runs: "cudnn", "xla" or "blocked".

    jax 0.11's implementation=None means XLA (it does not pick cuDNN by itself), so "auto" picks
    cuDNN flash attention on a GPU when its constraints hold (fp16/bf16, head_dim % 8 == 0, <= 128),
    the blocked flash-style custom-VJP attention (models/attention.py) on CPU, and XLA otherwise.
    An explicit "cudnn" that cannot run raises inside jax.
    """
    if impl == "auto":
        backend = jax.default_backend()
        if backend == "cpu":
            return "blocked"
        cudnn_ok = (
            backend == "gpu"
            and dtype in (jnp.bfloat16, jnp.float16)
            and head_dim % 8 == 0
            and head_dim <= 128
        )
        return "cudnn" if cudnn_ok else "xla"
    return impl


class Attention(nnx.Module):
    """Causal grouped-query attention (Ainslie et al. 2023): N query heads share K kv heads."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = N, K, H
        self.impl = resolve_attention_impl(cfg.attention_impl, jnp.dtype(cfg.compute_dtype), H)
        col, row = ("fsdp", "tensor"), ("tensor", "fsdp")
        # One fused projection, columns grouped per kv head: [D, K·(G + 2)·H] with column
        # (k, j, h) = query head k·G + j for j < G, then key (j = G) and value (j = G + 1) of kv
        # head k. One GEMM instead of three (the backward's dX is one GEMM too); a contiguous
        # "tensor" split of the columns hands each device whole kv groups whenever tensor | K.
        G = N // K
        self.qkv_proj = make_linear(D, K * (G + 2) * H, cfg=cfg, rngs=rngs, kernel_axes=col)
        self.o_proj = make_linear(
            N * H, D, cfg=cfg, rngs=rngs, kernel_axes=row, init_std=cfg.residual_init_std
        )

    def __call__(
        self,
        x_BTD: Float[Array, "B T D"],
        sin_BTH2: Float[Array, "B T H2"],
        cos_BTH2: Float[Array, "B T H2"],
        cache_kv: tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None = None,
        cache_index: Int[Array, ""] | None = None,
        mask_BTS: Bool[Array, "B T S"] | None = None,
    ) -> tuple[
        Float[Array, "B T D"], tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None
    ]:
        """Without a cache: causal self-attention over T. With one: write the T new keys/values
        at cache_index, attend to the whole cache under mask_BTS, return the updated cache."""
        B, T, _ = x_BTD.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        G = N // K
        qkv_BTKJH = self.qkv_proj(x_BTD).reshape(B, T, K, G + 2, H)
        q_BTNH = apply_rope(qkv_BTKJH[:, :, :, :G].reshape(B, T, N, H), sin_BTH2, cos_BTH2)
        k_BTKH = apply_rope(qkv_BTKJH[:, :, :, G], sin_BTH2, cos_BTH2)
        v_BTKH = qkv_BTKJH[:, :, :, G + 1]
        new_cache = None
        if cache_kv is None and self.impl == "blocked":
            out_BTNH = blocked_causal_attention(q_BTNH, k_BTKH, v_BTKH)
        elif cache_kv is None:
            # jax.nn.dot_product_attention does GQA itself (K divides N): no repeat of k/v.
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH, k_BTKH, v_BTKH, is_causal=True, implementation=self.impl
            )
        else:
            k_BSKH, v_BSKH = cache_kv
            start = (0, cache_index, 0, 0)
            k_BSKH = jax.lax.dynamic_update_slice(k_BSKH, k_BTKH.astype(k_BSKH.dtype), start)
            v_BSKH = jax.lax.dynamic_update_slice(v_BSKH, v_BTKH.astype(v_BSKH.dtype), start)
            # Decode is memory bound and uses an explicit mask: always the XLA path.
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                k_BSKH.astype(q_BTNH.dtype),
                v_BSKH.astype(q_BTNH.dtype),
                mask=mask_BTS[:, None, :, :],
                implementation="xla",
            )
            new_cache = (k_BSKH, v_BSKH)
        return self.o_proj(out_BTNH.reshape(B, T, N * H)), new_cache


class MLP(nnx.Module):
    """SwiGLU feed-forward (Shazeer 2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        # gate and up as one [D, 2F] projection, gate = columns [0, F), up = [F, 2F): one GEMM
        # (and one dX GEMM in the backward) instead of two; 1.07x faster train step at `tiny`
        # than an interleaved (f, gate|up) layout, whose size-2 minor axis makes XLA:CPU copy.
        # The halves layout cannot be split over "tensor" cleanly (a contiguous split would put
        # all gates on one device, all ups on another), so its output axis is replicated over
        # "tensor" (fsdp still shards D); down_proj's F rows stay tensor-sharded and GSPMD
        # slices the replicated activations locally, without communication.
        self.gate_up_proj = make_linear(D, 2 * F, cfg=cfg, rngs=rngs, kernel_axes=("fsdp", None))
        self.down_proj = make_linear(
            F,
            D,
            cfg=cfg,
            rngs=rngs,
            kernel_axes=("tensor", "fsdp"),
            init_std=cfg.residual_init_std,
        )

    def __call__(self, x_BTD: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
        gate_BTF, up_BTF = jnp.split(self.gate_up_proj(x_BTD), 2, axis=-1)
        return self.down_proj(jax.nn.silu(gate_BTF) * up_BTF)
