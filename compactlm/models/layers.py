"""Decoder building blocks: RMSNorm, RoPE, GQA attention, SwiGLU MLP (linears: models/linear.py)."""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from compactlm.models.attention import blocked_causal_attention, causal_window_mask, key_visible
from compactlm.models.config import BiasParam, ScaleParam
from compactlm.models.dense import param_init  # noqa: F401  (re-exported for callers)
from compactlm.models.linear import halves, make_linear, qkv_layout, single

if TYPE_CHECKING:
    from compactlm.models.config import ModelConfig


class RMSNorm(nnx.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), computed in f32, learned gain: the scale
    itself (init 1), or 1 + scale (init 0) with plus_one (Gemma's cfg.norm_plus_one)."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        param_dtype: jnp.dtype,
        compute_dtype: jnp.dtype,
        plus_one: bool = False,
    ):
        self.eps, self.compute_dtype, self.plus_one = eps, compute_dtype, plus_one
        init = jnp.zeros if plus_one else jnp.ones
        self.scale = ScaleParam(
            init((dim,), param_dtype), out_sharding=(None,), eager_sharding=False
        )

    @classmethod
    def of(cls, dim: int, cfg: ModelConfig) -> RMSNorm:
        """An RMSNorm of `dim` features with cfg's eps, dtypes and gain convention."""
        return cls(
            dim,
            eps=cfg.norm_eps,
            param_dtype=jnp.dtype(cfg.param_dtype),
            compute_dtype=jnp.dtype(cfg.compute_dtype),
            plus_one=cfg.norm_plus_one,
        )

    def gain(self) -> Float[Array, " D"]:
        """The f32 factor the normalised x is multiplied by (THE place (1 + w) is read)."""
        w = self.scale[...].astype(jnp.float32)
        return 1.0 + w if self.plus_one else w

    def set_gain(self, gain: Float[ArrayLike, " D"]) -> None:
        """Store `gain` as this norm's scale (AWQ folds its scales into the norm)."""
        w = jnp.asarray(gain, jnp.float32) - (1.0 if self.plus_one else 0.0)
        self.scale[...] = w.astype(self.scale[...].dtype)

    def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
        # f32 statistics: mean of squares in bf16 has 8 mantissa bits, too coarse for 1/rms.
        x32 = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * inv_rms * self.gain()).astype(self.compute_dtype)


class Context(NamedTuple):
    """What every layer of one forward pass shares (Transformer.context builds it once): the
    RoPE tables of the global layers (rope_theta, rope_scaling) and, with sliding layers, of the
    local ones (rope_local_theta); with a KV cache, the [B, T, S] masks of which cached keys
    each query sees (global: s <= position; local: also position - s < sliding_window)."""

    sin_BTH2: Float[Array, "B T H2"]
    cos_BTH2: Float[Array, "B T H2"]
    local_sin_BTH2: Float[Array, "B T H2"] | None = None
    local_cos_BTH2: Float[Array, "B T H2"] | None = None
    mask_BTS: Bool[Array, "B T S"] | None = None
    local_mask_BTS: Bool[Array, "B T S"] | None = None


def rope_inv_freq(head_dim: int, theta: float, cfg: ModelConfig | None = None) -> jax.Array:
    """[H/2] f32 angular frequencies theta^(-2j/H), then `cfg.rope_scaling`'s rule: THE place
    RoPE frequencies are computed (models/config.py RopeScaling; cfg None = plain RoPE).

    linear: every frequency / factor (= positions / factor). llama3 (transformers'
    `_compute_llama3_parameters`): wavelength 2π/f above original_max_len / low_freq_factor →
    f / factor; below original_max_len / high_freq_factor → f; in between, a linear blend with
    smooth = (original_max_len / wavelength − low) / (high − low).
    """
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    kind = "none" if cfg is None else cfg.rope_scaling
    if kind == "linear":
        inv_freq = inv_freq / cfg.rope_factor
    elif kind == "llama3":
        factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        original = cfg.rope_original_max_len
        wavelen = 2 * jnp.pi / inv_freq
        scaled = jnp.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < original / high) & ~(wavelen > original / low)
        inv_freq = jnp.where(medium, smoothed, scaled)
    return inv_freq


def rope_sin_cos(
    positions_BT: Int[Array, "B T"], head_dim: int, theta: float, cfg: ModelConfig | None = None
) -> tuple[Float[Array, "B T H2"], Float[Array, "B T H2"]]:
    """sin/cos of position * inv_freq (rope_inv_freq; cfg gives its scaling), in f32 — computed
    once per forward pass.

    Computed from the positions rather than a stored [max_seq_len, H/2] table: it costs B*T*H
    transcendentals per forward (nothing next to the matmuls), keeps no non-parameter state in the
    model's checkpoint, and works for any position (decode, packed sequences).
    """
    inv_freq = rope_inv_freq(head_dim, theta, cfg)
    angle = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    return jnp.sin(angle), jnp.cos(angle)


def make_context(
    positions_BT: Int[Array, "B T"], cfg: ModelConfig, cache_len: int | None = None
) -> Context:
    """The Context of a forward pass over `positions_BT` (cache_len: the KV cache's S, for its
    masks; None without a cache)."""
    H = cfg.resolved_head_dim
    sin, cos = rope_sin_cos(positions_BT, H, cfg.rope_theta, cfg)
    local_sin = local_cos = mask = local_mask = None
    if cfg.sliding_window:  # the local layers' plain RoPE at their own base
        local_sin, local_cos = rope_sin_cos(positions_BT, H, cfg.rope_local_theta)
    if cache_len is not None:
        t_BT1, s_11S = positions_BT[:, :, None], jnp.arange(cache_len)[None, None, :]
        mask = key_visible(t_BT1, s_11S)
        if cfg.sliding_window:
            local_mask = key_visible(t_BT1, s_11S, cfg.sliding_window)
    return Context(sin, cos, local_sin, local_cos, mask, local_mask)


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

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, path: str = "layers.0.attn"):
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = N, K, H
        self.impl = resolve_attention_impl(cfg.attention_impl, jnp.dtype(cfg.compute_dtype), H)
        col, row = ("fsdp", "tensor"), ("tensor", "fsdp")
        # One fused projection, columns grouped per kv head: [D, K·(G + 2)·H] with column
        # (k, j, h) = query head k·G + j for j < G, then key (j = G) and value (j = G + 1) of kv
        # head k. One GEMM instead of three (the backward's dX is one GEMM too); a contiguous
        # "tensor" split of the columns hands each device whole kv groups whenever tensor | K.
        # Its named views q / k / v (models/linear.py::Layout) are what adapters, export and
        # calibration see.
        self.qkv_proj = make_linear(
            qkv_layout(N, K, H), D, cfg=cfg, rngs=rngs, kernel_axes=col, path=path
        )
        self.o_proj = make_linear(
            single("o", D),
            N * H,
            cfg=cfg,
            rngs=rngs,
            kernel_axes=row,
            init_std=cfg.residual_init_std,
            path=path,
        )
        # Qwen2: biases of q, k, v in the fused column layout (k, j, h) of qkv_proj's kernel, so
        # qkv_layout's views split them exactly like the kernel's columns. Outside the linear:
        # quantize / prune replace linears' kernels only, and adapters never train it.
        self.qkv_bias = (
            BiasParam(jnp.zeros((K * (N // K + 2) * H,), jnp.dtype(cfg.param_dtype)))
            if cfg.qkv_bias
            else None
        )
        # Llama's attention_bias: o's bias (q, k, v's are qkv_bias), added after the projection.
        self.o_bias = BiasParam(jnp.zeros((D,), jnp.dtype(cfg.param_dtype))) if cfg.o_bias else None
        # Qwen3, Gemma 3: RMSNorm over each head's H features of q and k, before RoPE.
        self.q_norm = RMSNorm.of(H, cfg) if cfg.qk_norm else None
        self.k_norm = RMSNorm.of(H, cfg) if cfg.qk_norm else None
        # Gemma 3: scores × query_pre_attn_scalar^-1/2 instead of H^-1/2.
        self.scale = (cfg.query_pre_attn_scalar or H) ** -0.5
        self.sliding_window = cfg.sliding_window

    def __call__(
        self,
        x_BTD: Float[Array, "B T D"],
        ctx: Context,
        cache_kv: tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None = None,
        cache_index: Int[Array, ""] | None = None,
        rng: jax.Array | None = None,
        use_rope: Bool[ArrayLike, ""] | None = None,
        sliding: Bool[ArrayLike, ""] | None = None,
    ) -> tuple[
        Float[Array, "B T D"], tuple[Float[Array, "B S K H"], Float[Array, "B S K H"]] | None
    ]:
        """Without a cache: causal self-attention over T. With one: write the T new keys/values
        at cache_index, attend to the whole cache under ctx's mask, return the updated cache.
        rng: key for the projections' stochastic adapters (dropout); None = deterministic.
        The layer's flags (cfg.layer_flags(); a bool, or a scanned [] array; None = the
        model has no such per-layer choice): use_rope False = q and k unrotated (SmolLM3's
        no_rope_layers); sliding True = a local layer (Gemma 3: the sliding window, its own
        RoPE base). THE place both are read."""
        B, T, _ = x_BTD.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        y = self.qkv_proj(x_BTD, rng=_fold(rng, 0))
        if self.qkv_bias is not None:
            y = y + self.qkv_bias[...].astype(y.dtype)
        qkv = self.qkv_proj.layout.split(y)
        q_BTNH, k_BTKH = qkv["q"].reshape(B, T, N, H), qkv["k"].reshape(B, T, K, H)
        if self.q_norm is not None:
            q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
        sin_BTH2, cos_BTH2, mask_BTS = ctx.sin_BTH2, ctx.cos_BTH2, ctx.mask_BTS
        window = None
        if sliding is not None:  # a local layer: its RoPE base, its window (global: none)
            sin_BTH2 = jnp.where(sliding, ctx.local_sin_BTH2, sin_BTH2)
            cos_BTH2 = jnp.where(sliding, ctx.local_cos_BTH2, cos_BTH2)
            window = jnp.where(sliding, self.sliding_window, 0)
            if mask_BTS is not None:
                mask_BTS = jnp.where(sliding, ctx.local_mask_BTS, mask_BTS)
        q_rot_BTNH = apply_rope(q_BTNH, sin_BTH2, cos_BTH2)
        k_rot_BTKH = apply_rope(k_BTKH, sin_BTH2, cos_BTH2)
        if use_rope is not None:  # the cache stores what the layer uses
            q_rot_BTNH = jnp.where(use_rope, q_rot_BTNH, q_BTNH)
            k_rot_BTKH = jnp.where(use_rope, k_rot_BTKH, k_BTKH)
        q_BTNH, k_BTKH = q_rot_BTNH, k_rot_BTKH
        v_BTKH = qkv["v"].reshape(B, T, K, H)
        new_cache = None
        if cache_kv is None and self.impl == "blocked":
            out_BTNH = blocked_causal_attention(
                q_BTNH, k_BTKH, v_BTKH, scale=self.scale, window=window
            )
        elif cache_kv is None:
            # jax.nn.dot_product_attention does GQA itself (K divides N): no repeat of k/v.
            # A traced window is a mask (cuDNN's static local_window_size cannot follow a
            # scanned flag): XLA then.
            mask = None if window is None else causal_window_mask(T, window)[None, None]
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH,
                k_BTKH,
                v_BTKH,
                mask=mask,
                scale=self.scale,
                is_causal=mask is None,
                implementation=self.impl if mask is None else "xla",
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
                scale=self.scale,
                implementation="xla",
            )
            new_cache = (k_BSKH, v_BSKH)
        out_BTD = self.o_proj(out_BTNH.reshape(B, T, N * H), rng=_fold(rng, 1))
        if self.o_bias is not None:
            out_BTD = out_BTD + self.o_bias[...].astype(out_BTD.dtype)
        return out_BTD, new_cache


class MLP(nnx.Module):
    """Gated feed-forward (Shazeer 2020): down(act(gate(x)) * up(x)), act = silu (SwiGLU) or the
    tanh GELU (GeGLU, cfg.mlp_activation)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, path: str = "layers.0.mlp"):
        D, F = cfg.d_model, cfg.d_ff
        # gate and up as one [D, 2F] projection, gate = columns [0, F), up = [F, 2F): one GEMM
        # (and one dX GEMM in the backward) instead of two; 1.07x faster train step at `tiny`
        # than an interleaved (f, gate|up) layout, whose size-2 minor axis makes XLA:CPU copy.
        # The halves layout cannot be split over "tensor" cleanly (a contiguous split would put
        # all gates on one device, all ups on another), so its output axis is replicated over
        # "tensor" (fsdp still shards D); down_proj's F rows stay tensor-sharded and GSPMD
        # slices the replicated activations locally, without communication.
        self.gate_up_proj = make_linear(
            halves("gate", "up", F), D, cfg=cfg, rngs=rngs, kernel_axes=("fsdp", None), path=path
        )
        self.down_proj = make_linear(
            single("down", D),
            F,
            cfg=cfg,
            rngs=rngs,
            kernel_axes=("tensor", "fsdp"),
            init_std=cfg.residual_init_std,
            path=path,
        )

        # SwiGLU (Llama) or GeGLU with tanh GELU (Gemma's gelu_pytorch_tanh).
        self.activation = (
            jax.nn.silu
            if cfg.mlp_activation == "silu"
            else functools.partial(jax.nn.gelu, approximate=True)
        )
        # Llama's mlp_bias: gate and up's biases in gate_up's column layout (its views split
        # them like the kernel's columns), and down's; outside the linears, as qkv_bias.
        dt = jnp.dtype(cfg.param_dtype)
        self.gate_up_bias = BiasParam(jnp.zeros((2 * F,), dt)) if cfg.mlp_bias else None
        self.down_bias = BiasParam(jnp.zeros((D,), dt)) if cfg.mlp_bias else None

    def __call__(
        self, x_BTD: Float[Array, "B T D"], rng: jax.Array | None = None
    ) -> Float[Array, "B T D"]:
        y = self.gate_up_proj(x_BTD, rng=_fold(rng, 0))
        if self.gate_up_bias is not None:
            y = y + self.gate_up_bias[...].astype(y.dtype)
        gu = self.gate_up_proj.layout.split(y)
        h_BTF = self.activation(gu["gate"]) * gu["up"]
        out_BTD = self.down_proj(h_BTF, rng=_fold(rng, 1))
        if self.down_bias is not None:
            out_BTD = out_BTD + self.down_bias[...].astype(out_BTD.dtype)
        return out_BTD


def _fold(rng: jax.Array | None, i: int) -> jax.Array | None:
    """A distinct key per sub-module (None stays None: deterministic)."""
    return None if rng is None else jax.random.fold_in(rng, i)
