"""Autoregressive sampling (greedy, temperature, top-k, top-p) with the KV cache."""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Integer

from compactlm.models.transformer import Transformer


def filter_logits(
    logits_BV: Float[Array, "B V"],
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
) -> Float[Array, "B V"]:
    """logits / temperature with the tokens top-k and then top-p remove set to finfo.min.

    Order top-k, then top-p on the temperature-scaled distribution (HF transformers' and
    llama.cpp's order). top-p keeps the minimal nucleus (Holtzman et al. 2020): the most likely
    tokens whose cumulative probability first reaches top_p — a token is kept iff the mass
    strictly before it (descending order) is < top_p, so the top token always survives; tokens
    tied with the last kept logit are kept too. top_k 0 and top_p >= 1 switch a filter off.
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    scaled_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    removed = jnp.finfo(jnp.float32).min
    if top_k and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(scaled_BV, top_k)[0][:, -1:]
        scaled_BV = jnp.where(scaled_BV < kth_B1, removed, scaled_BV)
    sorted_BV = jnp.sort(scaled_BV, axis=-1)[:, ::-1]  # descending
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # top_p >= 1 keeps all: f32 cumsum can reach 1.0 before the far tail does.
    keep_BV = (mass_before_BV < top_p) | (jnp.asarray(top_p) >= 1.0)
    # Smallest kept logit in sorted order = the cut-off; index 0 is always kept.
    n_keep_B = jnp.sum(keep_BV, axis=-1)
    cutoff_B1 = jnp.take_along_axis(sorted_BV, (n_keep_B - 1)[:, None], axis=-1)
    return jnp.where(scaled_BV < cutoff_B1, removed, scaled_BV)


def sample_logits(
    logits_BV: Float[Array, "B V"],
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
) -> Int[Array, " B"]:
    """One token per row from filter_logits' distribution; temperature 0 → argmax.

    temperature and top_p may be traced (one compile serves all values); top_k is static
    (lax.top_k needs a static k).
    """
    greedy_B = jnp.argmax(logits_BV, axis=-1)
    sampled_B = jax.random.categorical(
        rng, filter_logits(logits_BV, temperature, top_k, top_p), axis=-1
    )
    return jnp.where(jnp.asarray(temperature) > 0, sampled_B, greedy_B).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("max_new_tokens", "top_k", "eos_ids", "vocab_limit"))
def _generate(
    model: Transformer,
    prompt_BP: jax.Array,
    rng: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    max_new_tokens: int,
    top_k: int,
    eos_ids: tuple[int, ...],
    vocab_limit: int | None = None,
    first_V: jax.Array | None = None,
) -> jax.Array:
    """Prefill the prompt, then lax.while_loop one decode step per token (one compile, no
    per-token host round trip, early exit once every row has emitted one of eos_ids; rows that
    have are padded with eos_ids[0]). first_V: the ids the first new token may be (token
    healing), None = any."""
    B, P = prompt_BP.shape
    cache = model.init_cache(B, P + max_new_tokens)
    logits_BPV, cache = model(prompt_BP, cache=cache)
    pad = eos_ids[0] if eos_ids else 0
    out_BS = jnp.full((B, P + max_new_tokens), pad, jnp.int32).at[:, :P].set(prompt_BP)

    def cond(carry):
        i, _, _, _, done_B, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, out_BS, last_logits_BV, cache, done_B, rng = carry
        rng, step_rng = jax.random.split(rng)
        if vocab_limit is not None:  # padded embedding rows are not tokens: never sample them
            valid_V = jnp.arange(last_logits_BV.shape[-1]) < vocab_limit
            last_logits_BV = jnp.where(valid_V, last_logits_BV, jnp.finfo(jnp.float32).min)
        if first_V is not None:
            barred_V = (i == 0) & ~first_V
            last_logits_BV = jnp.where(barred_V, jnp.finfo(jnp.float32).min, last_logits_BV)
        tok_B = sample_logits(last_logits_BV, step_rng, temperature, top_k, top_p)
        tok_B = jnp.where(done_B, pad, tok_B)
        out_BS = jax.lax.dynamic_update_slice(out_BS, tok_B[:, None], (0, P + i))
        if eos_ids:
            eos_E = jnp.asarray(eos_ids, jnp.int32)
            done_B = done_B | jnp.any(tok_B[:, None] == eos_E[None, :], axis=-1)
        logits_B1V, cache = model(tok_B[:, None], cache=cache)
        return i + 1, out_BS, logits_B1V[:, 0], cache, done_B, rng

    init = (jnp.int32(0), out_BS, logits_BPV[:, -1], cache, jnp.zeros((B,), bool), rng)
    return jax.lax.while_loop(cond, body, init)[1]


def generate(
    model: Transformer,
    prompt_tokens: Integer[ArrayLike, "B P"] | Integer[ArrayLike, " P"],  # jax or NumPy ids
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eos_id: int | Sequence[int] | None = None,
    vocab_limit: int | None = None,
    first_allowed: Bool[ArrayLike, " W"] | None = None,
) -> Int[Array, "B PM"]:  # PM = P + max_new_tokens
    """Prompt followed by max_new_tokens sampled tokens; a row ends at the first of its new
    tokens that is an eos id and is padded with the first eos id after it.

    eos_id: one id, or several (Llama 3 instruct's generation_config.json stops at
    <|end_of_text|>, <|eom_id|> and <|eot_id|>), or None (never stop early).
    All rows share the prompt length P (left-pad ragged prompts yourself). The cache holds exactly
    P + max_new_tokens positions; one compile per (B, P, max_new_tokens, top_k, eos ids) — a
    different temperature / top_p / seed reuses it. vocab_limit: only ids below it are sampled
    (the tokenizer's vocabulary; the embedding is padded past it to a multiple of 64).
    first_allowed: a mask over the first W ids (W <= the model's vocabulary; ids past it are
    barred) that the FIRST new token is drawn from, renormalized: the second half of token
    healing (data/tokenizer.py::heal_prompt). None = no constraint.
    """
    prompt_BP = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_BP.ndim == 1:
        prompt_BP = prompt_BP[None]
    if max_new_tokens < 1:
        return prompt_BP
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
            f"{temperature=}, {top_p=}, {top_k=}"
        )
    return _generate(
        model,
        prompt_BP,
        jax.random.key(seed),
        jnp.float32(temperature),
        jnp.float32(top_p),
        max_new_tokens=max_new_tokens,
        top_k=top_k,
        eos_ids=_eos_tuple(eos_id),
        vocab_limit=vocab_limit,
        first_V=_first_mask(first_allowed, model.cfg.vocab_size),
    )


def _eos_tuple(eos_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """eos_id as the hashable static tuple the compiled loop takes (order kept: the first pads)."""
    if eos_id is None:
        return ()
    ids = [eos_id] if np.ndim(eos_id) == 0 else list(eos_id)
    return tuple(dict.fromkeys(int(i) for i in ids))  # Python ints: one compile per id set


def _first_mask(allowed_W, vocab_size: int) -> jax.Array | None:
    """The first-token mask padded with False to the model's vocabulary."""
    if allowed_W is None:
        return None
    allowed_W = jnp.asarray(allowed_W, bool)
    if allowed_W.shape[0] > vocab_size or not bool(allowed_W.any()):
        raise ValueError(
            f"first_allowed must mark at least one of the model's {vocab_size} ids "
            f"(got {allowed_W.shape[0]} entries, {int(allowed_W.sum())} set)"
        )
    return jnp.zeros((vocab_size,), bool).at[: allowed_W.shape[0]].set(allowed_W)
