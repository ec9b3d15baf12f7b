"""Language-model losses: next-token cross-entropy with optional z-loss, in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def cross_entropy(
    logits_BTV: Float[Array, "B T V"],
    targets_BT: Int[Array, "B T"],
    mask_BT: Float[Array, "B T"] | None = None,
    *,
    z_loss: float = 0.0,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """Mean next-token negative log-likelihood (nats) over unmasked positions.

    z-loss (PaLM, Chowdhery et al. 2022 §5) adds `z_loss * log(Z)^2` to keep the softmax
    normaliser near 1, which stabilises bf16 logits; 1e-4 is the PaLM value.
    Returns (loss to optimise, metrics) where metrics["nll"] excludes the z-loss term.
    """
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    nll_BT = log_z_BT - target_logit_BT
    if mask_BT is None:
        mask_BT = jnp.ones_like(nll_BT)
    mask_BT = mask_BT.astype(jnp.float32)
    count = jnp.maximum(mask_BT.sum(), 1.0)
    nll = (nll_BT * mask_BT).sum() / count
    loss = nll
    metrics = {"nll": nll}
    if z_loss:
        zl = z_loss * ((log_z_BT**2) * mask_BT).sum() / count
        loss = loss + zl
        metrics["z_loss"] = zl
    return loss, metrics


def summed_nll(
    logits_BTV: Float[Array, "B T V"], targets_BT: Int[Array, "B T"], mask_BT: Float[Array, "B T"]
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(sum of NLL in nats over unmasked positions, number of positions) for exact eval means."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    mask_BT = mask_BT.astype(jnp.float32)
    return ((log_z_BT - target_logit_BT) * mask_BT).sum(), mask_BT.sum()
