"""The Llama-style decoder Transformer (embed → blocks → norm → logits) and its KV cache; other
families' differences are ModelConfig fields read in models/layers.py.

`ModelConfig` lives in models/config.py (re-exported here for callers).
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

# Shape suffixes (one legend for all model code; einsum strings use the same letters):
#   B batch            T query positions     S key positions (KV-cache length)
#   D d_model          N query heads         K kv heads          H head dim    (H2 = H / 2)
#   F MLP hidden       V vocab               R LoRA rank         L layers (the scan axis)
#   J slot in a fused qkv group (G query heads, then k, v; G = N / K)
#   M folded query rows T·G of one kv head (models/attention.py)
#   L1 hidden states L + 1 (return_hidden: the embedding output, then each block's)

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int, Integer

from compactlm.models.config import EmbeddingParam, ModelConfig
from compactlm.models.dense import param_init
from compactlm.models.input_noise import apply_input_noise
from compactlm.models.layers import MLP, Attention, RMSNorm, make_context
from compactlm.models.linear import make_linear, single

__all__ = ["Block", "KVCache", "ModelConfig", "Transformer"]

# The logit of a padding id (cfg.vocab_valid): exp() of it is 0 in every softmax, loss and sample,
# yet it stays finite through a temperature down to 1e-6 (−1e36; finfo.min / T would be −inf, and
# 0·(−inf) is NaN in a divergence's p·log p).
PADDING_LOGIT = -1e30


class KVCache(NamedTuple):
    """Keys/values of all layers, stacked on L, and how many positions are filled."""

    k_LBSKH: Float[Array, "L B S K H"]
    v_LBSKH: Float[Array, "L B S K H"]
    index: Int[Array, ""]  # next position to write; all rows of the batch share it


class Block(nnx.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then x + mlp(norm(x)); with sandwich norms
    (Gemma) each branch's output is normed again before the add."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, layer: int = 0):
        """layer: the block's index, naming its linears' paths (`layers.3.attn.q`) for adapter
        targeting; scanned blocks are built once for all layers (Transformer checks that the
        targets do not depend on the index then)."""
        D = cfg.d_model
        self.attn_norm = RMSNorm.of(D, cfg)
        self.attn = Attention(cfg, rngs=rngs, path=f"layers.{layer}.attn")
        self.mlp_norm = RMSNorm.of(D, cfg)
        self.mlp = MLP(cfg, rngs=rngs, path=f"layers.{layer}.mlp")
        # Gemma's post_attention_layernorm / post_feedforward_layernorm (cfg.sandwich_norms).
        self.attn_post_norm = RMSNorm.of(D, cfg) if cfg.sandwich_norms else None
        self.mlp_post_norm = RMSNorm.of(D, cfg) if cfg.sandwich_norms else None

    def __call__(self, x_BTD, ctx, cache_kv=None, cache_index=None, rng=None, flags=None):
        """ctx: the pass's Context; flags: this layer's per-layer data (cfg.layer_flags(),
        by name; None or {}: none), handed to Attention, which reads them."""
        attn_rng, mlp_rng = (None, None) if rng is None else jax.random.split(rng)
        h_BTD, cache_kv = self.attn(
            self.attn_norm(x_BTD), ctx, cache_kv, cache_index, attn_rng, **(flags or {})
        )
        if self.attn_post_norm is not None:
            h_BTD = self.attn_post_norm(h_BTD)
        x_BTD = x_BTD + h_BTD
        h_BTD = self.mlp(self.mlp_norm(x_BTD), mlp_rng)
        if self.mlp_post_norm is not None:
            h_BTD = self.mlp_post_norm(h_BTD)
        return x_BTD + h_BTD, cache_kv


def _remat(fn, mode: str):
    if mode == "none":
        return fn
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if mode == "dots" else None
    return jax.checkpoint(fn, policy=policy)


class Transformer(nnx.Module):
    """Llama-style decoder: token embedding, n_layers pre-norm blocks, final RMSNorm, logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model
        # [V, D] with V over "tensor", D over "fsdp" (MaxText's vocab/embed layout).
        init = param_init(cfg.init_std, ("tensor", "fsdp"))
        self.embedding = EmbeddingParam(init(rngs.params(), (V, D), jnp.dtype(cfg.param_dtype)))
        if cfg.scan_layers:
            cfg.check_uniform_targets()

            # One Block per slice of a stacked [L, ...] state; the layer axis is unsharded (None).
            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
            def make_blocks(rngs: nnx.Rngs) -> Block:
                return Block(cfg, rngs=rngs)

            self.layers = make_blocks(rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs, layer=i) for i in range(cfg.n_layers)])
        self.final_norm = RMSNorm.of(D, cfg)
        # One assignment: a Module here is pytree data, None a static attribute.
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else make_linear(
                single("lm_head", V),
                D,
                cfg=cfg,
                rngs=rngs,
                kernel_axes=("fsdp", "tensor"),
                out_dtype="float32",
                path="",
                storage="dense",  # the head stays dense under packed formats (as in QLoRA)
            )
        )

    def embed(self, tokens_BT: Integer[ArrayLike, "B T"]) -> Float[Array, "B T D"]:
        """The input of block 0: embedding rows in the compute dtype, × √D with embed_scale
        (Gemma: the factor rounded to the parameter dtype first, as transformers does)."""
        cfg = self.cfg
        x_BTD = jnp.take(self.embedding[...], tokens_BT, axis=0)
        if cfg.embed_scale:
            x_BTD = x_BTD * jnp.asarray(cfg.d_model**0.5, x_BTD.dtype)
        return x_BTD.astype(cfg.compute_dtype)

    def init_cache(
        self, batch_size: int, max_len: int | None = None, dtype: str | None = None
    ) -> KVCache:
        """An empty cache of max_len (default cfg.max_seq_len) positions in dtype (compute)."""
        cfg = self.cfg
        shape = (
            cfg.n_layers,
            batch_size,
            max_len or cfg.max_seq_len,
            cfg.n_kv_heads,
            cfg.resolved_head_dim,
        )
        dt = jnp.dtype(dtype or cfg.compute_dtype)
        return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt), jnp.zeros((), jnp.int32))

    def __call__(
        self,
        tokens_BT: Integer[ArrayLike, "B T"],  # jax or NumPy ids, any int width (uint16 memmaps)
        *,
        positions_BT: Integer[ArrayLike, "B T"] | None = None,
        cache: KVCache | None = None,
        rng: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> (
        Float[Array, "B T V"]
        | tuple[Float[Array, "B T V"], KVCache]
        | tuple[Float[Array, "B T V"], Float[Array, "L1 B T D"]]
    ):
        """float32 logits. Without a cache: causal over tokens_BT (training / scoring).

        With a cache: tokens_BT are positions cache.index … cache.index+T-1 (a prefill, or T=1 for
        one decode step); they attend to everything cached so far; returns (logits, new cache).
        Shapes are static, so one jitted step serves every decode position.
        rng: the training step's key for stochastic regularisers (adapter dropout); None =
        deterministic (evaluation, generation).
        return_hidden (no cache): also return the residual stream hidden_L1BTD [L1, B, T, D]
        in the compute dtype: index 0 the embedding output, index l the output of block l
        (before the final norm), so l = n_layers is the last block's (feature distillation).
        """
        cfg = self.cfg
        if return_hidden and cache is not None:
            raise ValueError("return_hidden needs the uncached forward pass (cache=None)")
        B, T = tokens_BT.shape
        if positions_BT is None:
            start = 0 if cache is None else cache.index
            positions_BT = jnp.broadcast_to(start + jnp.arange(T, dtype=jnp.int32), (B, T))
        x_BTD = self.embed(tokens_BT)
        if rng is not None and (cfg.neftune_alpha > 0 or cfg.span_mask_rate > 0):
            x_BTD = apply_input_noise(
                x_BTD,
                jax.random.fold_in(rng, 0xFFFFFFFE),  # blocks: split(rng); LM head: 2**32 - 1
                span_mask_rate=cfg.span_mask_rate,
                span_length=cfg.span_length,
                neftune_alpha=cfg.neftune_alpha,
            )
        index = None if cache is None else cache.index
        ctx = make_context(positions_BT, cfg, None if cache is None else cache.k_LBSKH.shape[2])

        def apply_block(graphdef, state, x_BTD, cache_kv, layer_rng, flags):
            block = nnx.merge(graphdef, state)
            return block(x_BTD, ctx, cache_kv, index, layer_rng, flags)

        apply_block = _remat(apply_block, cfg.remat)
        kv = None if cache is None else (cache.k_LBSKH, cache.v_LBSKH)
        layer_rngs = None if rng is None else jax.random.split(rng, cfg.n_layers)
        layer_flags = cfg.layer_flags()  # what differs between layers (RoPE or not, sliding)
        if cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            # Scanned blocks share one structure: the flags are scanned data, [L] each.
            flags_L = {name: jnp.asarray(f) for name, f in layer_flags.items()}

            def body(x_BTD, xs):
                layer_state, cache_kv, layer_rng, flags = xs
                x_BTD, cache_kv = apply_block(
                    graphdef, layer_state, x_BTD, cache_kv, layer_rng, flags
                )
                # The per-layer outputs are stacked only when asked for (scan's ys are stored).
                return x_BTD, ((cache_kv, x_BTD) if return_hidden else cache_kv)

            x0_BTD = x_BTD
            x_BTD, ys = jax.lax.scan(body, x_BTD, (state, kv, layer_rngs, flags_L))
            if return_hidden:
                kv, blocks_LBTD = ys
                hidden_L1BTD = jnp.concatenate([x0_BTD[None], blocks_LBTD])
            else:
                kv = ys
        else:
            hidden = [x_BTD]
            new_k, new_v = [], []
            for i, layer in enumerate(self.layers):
                graphdef, state = nnx.split(layer)
                layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                layer_rng = None if layer_rngs is None else layer_rngs[i]
                flags = {name: f[i] for name, f in layer_flags.items()}
                x_BTD, layer_kv = apply_block(graphdef, state, x_BTD, layer_kv, layer_rng, flags)
                hidden.append(x_BTD)
                if layer_kv is not None:
                    new_k.append(layer_kv[0])
                    new_v.append(layer_kv[1])
            kv = (jnp.stack(new_k), jnp.stack(new_v)) if cache is not None else None
            hidden_L1BTD = jnp.stack(hidden) if return_hidden else None

        x_BTD = self.final_norm(x_BTD)
        if self.lm_head is None:
            logits_BTV = jnp.einsum(
                "btd,vd->btv",
                x_BTD,
                self.embedding[...].astype(cfg.compute_dtype),
                preferred_element_type=jnp.float32,
            )
        else:
            logits_BTV = self.lm_head(
                x_BTD, rng=None if rng is None else jax.random.fold_in(rng, 0xFFFFFFFF)
            )
        logits_BTV = logits_BTV.astype(jnp.float32)
        if cfg.vocab_valid:  # THE place padding ids of an imported vocabulary leave the softmax
            valid_V = jnp.arange(cfg.vocab_size) < cfg.vocab_valid
            logits_BTV = jnp.where(valid_V, logits_BTV, PADDING_LOGIT)
        if return_hidden:
            return logits_BTV, hidden_L1BTD
        if cache is None:
            return logits_BTV
        return logits_BTV, KVCache(kv[0], kv[1], cache.index + T)
