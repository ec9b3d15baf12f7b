# ruff: noqa: F722  (jaxtyping shape strings are not forward references)
"""Training-only noise on the model's input embeddings: span masking and NEFTune.

Both corrupt the INPUTS only — the targets stay the original next tokens (the denoising
objective) — which is why they live here and not in the data pipeline (data/augment.py), whose
[B, T+1] windows share inputs and targets. They run only when the model is given the step's
`rng` (training); `rng=None` (evaluation, generation) leaves the embeddings untouched. The key
is the step key (`step_rng(TrainState.rng, step)`), so the noise is a pure function of
(train.seed, step) and a resumed run is bit-exact.

- Span masking (`model.span_mask_rate`, `model.span_length`): spans of span_length positions
  are masked; each position is covered with probability span_mask_rate (span starts are drawn
  with p = 1 - (1 - rate)^(1/L), including starts before position 0, so the rate is the same at
  every position). A masked input's embedding is replaced by zeros: a blank that carries no
  token identity (word-embedding dropout, Gal & Ghahramani 2016; the blank-noising of Xie et al.
  2017), with no extra parameter and no dependence on the tokenizer's special ids.
- NEFTune (Jain et al. 2023, `model.neftune_alpha`): x + U(-1, 1) · alpha / √(T·D) on the
  embeddings of the whole [B, T, D] input (T = the input length, as TRL's implementation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


def span_starts_to_mask(starts_BU: Bool[Array, "B U"], span_length: int) -> Bool[Array, "B T"]:
    """starts over U = T + L - 1 slots (slot s = position s - L + 1) → positions covered by a
    span [s, s + L): masked[t] = any(starts[t : t + L])."""
    c = jnp.cumsum(starts_BU.astype(jnp.int32), axis=1)
    c = jnp.pad(c, ((0, 0), (1, 0)))
    return (c[:, span_length:] - c[:, :-span_length]) > 0


def span_mask(rng: jax.Array, B: int, T: int, rate: float, span_length: int) -> Bool[Array, "B T"]:
    """Which of the [B, T] inputs are masked: P(masked) = rate at every position."""
    p_start = 1.0 - (1.0 - rate) ** (1.0 / span_length)
    starts = jax.random.bernoulli(rng, p_start, (B, T + span_length - 1))
    return span_starts_to_mask(starts, span_length)


def neftune_noise(
    rng: jax.Array, shape: tuple[int, int, int], alpha: float
) -> Float[Array, "B T D"]:
    """U(-1, 1) · alpha / √(T·D) in float32 (Jain et al. 2023, Algorithm 1)."""
    _, T, D = shape
    return jax.random.uniform(rng, shape, jnp.float32, -1.0, 1.0) * (alpha / (T * D) ** 0.5)


def apply_input_noise(
    x_BTD: Float[Array, "B T D"],
    rng: jax.Array,
    *,
    span_mask_rate: float,
    span_length: int,
    neftune_alpha: float,
) -> Float[Array, "B T D"]:
    """Span-mask then NEFTune the input embeddings (the caller passes rng only in training)."""
    mask_key, noise_key = jax.random.split(rng)
    B, T, _ = x_BTD.shape
    if span_mask_rate > 0:
        masked_BT = span_mask(mask_key, B, T, span_mask_rate, span_length)
        x_BTD = jnp.where(masked_BT[:, :, None], jnp.zeros((), x_BTD.dtype), x_BTD)
    if neftune_alpha > 0:
        noise = neftune_noise(noise_key, x_BTD.shape, neftune_alpha)
        x_BTD = (x_BTD.astype(jnp.float32) + noise).astype(x_BTD.dtype)
    return x_BTD
