"""AdamW or Muon with warmup + decay schedule, global-norm clipping and a weight-decay mask (optax).

Muon (Jordan et al. 2024, modded-nanogpt; optax.contrib.muon) orthogonalizes the momentum of each
block linear's kernel with Newton-Schulz iterations; the embedding and the RMSNorm scales stay on
AdamW. Its updates are rescaled to a fixed RMS per unit learning rate (`muon_rms`; Liu et al. 2025
"Muon is Scalable", §2.2, match AdamW's with 0.2), so both groups share one schedule.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx

from compactlm.models.config import AdapterConfig, BiasParam, EmbeddingParam, ScaleParam
from compactlm.train.config import OptimConfig

__all__ = ["OptimConfig", "decay_mask", "make_optimizer", "make_schedule"]


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine / linear decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, warmup + decay_steps, end)
    if cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        decay = optax.constant_schedule(cfg.lr)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _ndim(leaf: Any) -> int:
    value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return getattr(value, "ndim", 0)  # 0 for optax's MaskedNode (the other group's leaves)


def decay_mask(cfg: OptimConfig, params: Any, adapter: AdapterConfig | None = None) -> Any:
    """True where weight decay applies, by parameter kind (models/config.py), never by module
    name: adapter factors and DoRA magnitudes (nnx.LoRAParam) only with adapter.decay; the
    embedding (EmbeddingParam) only with decay_embeddings; norm scales (ScaleParam) only with
    decay_norms; every other parameter when it is a matrix (rank >= 2, nanoGPT's rule)."""

    def keep(leaf: Any) -> bool:
        if isinstance(leaf, nnx.LoRAParam):
            return bool(adapter is not None and adapter.decay)
        if isinstance(leaf, ScaleParam):
            return cfg.decay_norms
        if isinstance(leaf, BiasParam):
            return False
        if isinstance(leaf, EmbeddingParam):
            return cfg.decay_embeddings
        return _ndim(leaf) >= 2

    def mark(leaf: Any) -> Any:
        flag = keep(leaf)  # same tree structure as params: Variables keep their type
        return leaf.replace(flag) if isinstance(leaf, nnx.Variable) else flag

    return jax.tree.map(mark, params, is_leaf=_is_variable)


def muon_dimensions(params: Any) -> Any:
    """optax Muon's dimension numbers: the last two axes (in, out) of every matrix, leading axes
    (scanned layers) batched; None (AdamW) for the embedding, the norm scales and DoRA's
    magnitudes (by kind, as decay_mask: gains, [out] or [L, out] when scanned, are not matrices
    to orthogonalise) and for vectors."""
    from optax.contrib import MuonDimensionNumbers

    from compactlm.models.lora import DoRAMagnitude

    gains = (EmbeddingParam, ScaleParam, BiasParam, DoRAMagnitude)

    def mark(leaf: Any) -> Any:
        ndim = _ndim(leaf)
        matrix = ndim >= 2 and not isinstance(leaf, gains)
        dims = MuonDimensionNumbers(ndim - 2, ndim - 1) if matrix else None
        return leaf.replace(dims) if isinstance(leaf, nnx.Variable) else dims

    return jax.tree.map(mark, params, is_leaf=_is_variable)


def scale_lora_b(ratio: float) -> optax.GradientTransformation:
    """Multiply the updates of LoRA's B factors by `ratio`: after AdamW that is exactly a learning
    rate of ratio × lr for B (decoupled decay included), which is LoRA+ (Hayou et al. 2024).
    Stateless, so the optimizer state keeps the params' structure."""
    from compactlm.models.lora import LoRAB

    def scale(v: Any) -> Any:
        return v.replace(v.get_value() * ratio) if isinstance(v, LoRAB) else v

    def update(updates, state, params=None):
        del params
        return jax.tree.map(scale, updates, is_leaf=_is_variable), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(
    cfg: OptimConfig, total_steps: int, *, adapter: AdapterConfig | None = None
) -> optax.GradientTransformation:
    """Clip, then AdamW on the schedule; with adapter.lora_plus_ratio > 0 (LoRA+, Hayou et al.
    2024) the B factors run at ratio × the schedule's learning rate."""
    schedule = make_schedule(cfg, total_steps)

    chain = []
    if cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.kind == "muon":
        from optax.contrib import muon

        # Decay in the Muon group follows decay_mask (its leaves are matrices: all decayed,
        # except adapter factors without adapter.decay); the AdamW group (embedding, norms, DoRA
        # magnitudes) is undecayed, as decay_mask has it by default (OptimConfig refuses
        # decay_embeddings / decay_norms with Muon). optax runs that group with Nesterov
        # momentum too (NAdamW), as it does the Muon group.
        chain.append(
            muon(
                schedule,
                beta=cfg.muon_momentum,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                weight_decay_mask=lambda p: decay_mask(cfg, p, adapter),
                consistent_rms=cfg.muon_rms,
                muon_weight_dimension_numbers=muon_dimensions,
                adam_b1=cfg.b1,
                adam_b2=cfg.b2,
                adam_weight_decay=0.0,
            )
        )
    else:
        chain.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=lambda p: decay_mask(cfg, p, adapter),
            )
        )
    ratio = adapter.lora_plus_ratio if adapter is not None and adapter.kind != "none" else 0.0
    if ratio > 0:
        chain.append(scale_lora_b(ratio))
    return optax.chain(*chain)
