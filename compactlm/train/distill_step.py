"""The distillation objective for the jitted train step: frozen teacher + on-policy continuations.

`make_objective(cfg, teacher_graphdef)` returns `objective(model, tokens_BT1, rng, aux)` in the
shape train/step.py's `build(objective=...)` expects. `aux` is the teacher's nnx.State (passed to
every step as a jit argument, never part of the student's TrainState, so never checkpointed with
it); the teacher runs in the same compiled step under `stop_gradient`.

On-policy fraction λ (`distill.on_policy`, GKD: Agarwal et al. 2024 §3): with probability λ a
step's batch keeps only its first P = `distill.on_policy_prompt` data tokens as the prompt and
its continuation is sampled from the current student with the KV cache; the teacher then scores
that sequence. The coin and the samples come from the step's rng (a function of seed and step),
so a resumed run draws the same batches. On a sampled batch the divergence covers the positions
that predict sampled tokens and the hard-label CE only the data prompt (the student's own samples
are not labels); on a data batch both cover every position.

Cross-tokenizer (`distill.cross_tokenizer=uld`, train/distill_uld.py; `=gold`,
train/distill_gold.py): the batch also carries the teacher's re-tokenization of each window and
the byte alignment (gold: alignment groups); make_objective hands over to that module's
make_objective.

Feature distillation (`distill.features`, train/distill_features.py): both models also return
their hidden states; the paired ones add `feature_weight` × the feature loss (metric
`distill/feature`) over the divergence's positions, through the student's own projection when
the widths differ.
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Int

from compactlm.models.generate import sample_logits
from compactlm.train.distill import FEATURE_METRIC, DistillConfig, DistillLoss
from compactlm.train.distill_features import feature_loss


def sample_continuation(
    model: nnx.Module,
    tokens_BS: Int[Array, "B S"],
    prompt_len: int,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
) -> Int[Array, "B S"]:
    """tokens_BS with positions prompt_len … S−1 replaced by tokens sampled from `model`.

    Prefill the prompt into a KV cache of exactly S positions, then one cached decode step per
    new token (lax.fori_loop: static shapes, one compile). The model's parameters are read under
    stop_gradient: the samples are data for the loss, not part of its gradient.
    """
    B, S = tokens_BS.shape
    n_new = S - prompt_len
    if n_new <= 0:
        return tokens_BS
    graphdef, state = nnx.split(model)
    sampler = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    cache = sampler.init_cache(B, S)
    logits_BPV, cache = sampler(tokens_BS[:, :prompt_len], cache=cache)
    keys = jax.random.split(rng, n_new)
    first_B = sample_logits(logits_BPV[:, -1], keys[0], temperature)
    out_BS = tokens_BS.at[:, prompt_len].set(first_B)

    def body(i, carry):
        out_BS, cache = carry
        tok_B = jax.lax.dynamic_slice_in_dim(out_BS, prompt_len + i - 1, 1, axis=1)
        logits_B1V, cache = sampler(tok_B, cache=cache)
        next_B = sample_logits(logits_B1V[:, 0], keys[i], temperature)
        out_BS = jax.lax.dynamic_update_slice_in_dim(out_BS, next_B[:, None], prompt_len + i, 1)
        return out_BS, cache

    out_BS, _ = jax.lax.fori_loop(1, n_new, body, (out_BS, cache))
    return out_BS


def on_policy_masks(seq_len: int, prompt_len: int) -> tuple[jax.Array, jax.Array]:
    """(divergence mask, CE mask) [T] over the T = seq_len − 1 predicted positions of a sampled
    batch: position t predicts token t + 1, which was sampled iff t + 1 >= prompt_len."""
    t = jnp.arange(seq_len - 1)
    sampled = (t + 1 >= prompt_len).astype(jnp.float32)
    return sampled, 1.0 - sampled


def make_objective(
    cfg: DistillConfig,
    teacher_graphdef: nnx.GraphDef,
    feature_pairs: tuple[tuple[int, int], ...] = (),
    *,
    seq_len: int = 0,
    teacher_len: int = 0,
    first_bytes: tuple[np.ndarray, np.ndarray] | None = None,
    vocab_map: tuple[np.ndarray, np.ndarray] | None = None,
) -> Callable[[nnx.Module, jax.Array, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """objective(student, tokens_BT1, rng, teacher_state) -> (loss, metrics) for build().

    feature_pairs: (student, teacher) hidden-state indices (distill_features.feature_pairs);
    used when cfg.features != "none". seq_len, teacher_len, first_bytes: the packed batch's
    layout and the agreement tables of distill.cross_tokenizer=uld|gold (train/distill_uld.py);
    vocab_map: gold's (student ids, teacher ids) of identical tokens (train/distill_gold.py)."""
    if cfg.cross_tokenizer == "gold":
        from compactlm.train.distill_gold import make_objective as gold_objective

        if seq_len <= 0 or teacher_len <= 1 or vocab_map is None:
            raise ValueError("distill.cross_tokenizer=gold needs seq_len, teacher_len, vocab_map")
        return gold_objective(cfg, teacher_graphdef, seq_len, teacher_len, vocab_map, first_bytes)
    if cfg.cross_tokenizer == "uld":
        from compactlm.train.distill_uld import make_objective as uld_objective

        if seq_len <= 0 or teacher_len <= 1:
            raise ValueError("distill.cross_tokenizer=uld needs seq_len and teacher_len")
        return uld_objective(cfg, teacher_graphdef, seq_len, teacher_len, first_bytes)
    loss_fn = DistillLoss(cfg)
    features = cfg.features != "none"
    if features and not feature_pairs:
        raise ValueError("distill.features needs the (student, teacher) hidden-state pairs")
    s_idx = np.asarray([s for s, _ in feature_pairs], np.int32)  # static gathers
    t_idx = np.asarray([t for _, t in feature_pairs], np.int32)

    def objective(model, tokens_BT1, rng, aux):
        B, S = tokens_BT1.shape
        div_mask_T = ce_mask_T = jnp.ones((S - 1,), jnp.float32)
        on_policy = jnp.float32(0.0)
        model_rng, coin_rng, sample_rng = jax.random.split(rng, 3)
        if cfg.on_policy > 0.0:
            use = jax.random.uniform(coin_rng) < cfg.on_policy
            if cfg.on_policy >= 1.0:
                use = jnp.bool_(True)
            tokens_BT1 = jax.lax.cond(
                use,
                lambda t: sample_continuation(
                    model, t, cfg.on_policy_prompt, sample_rng, cfg.on_policy_temperature
                ),
                lambda t: t,
                tokens_BT1,
            )
            sampled_div, sampled_ce = on_policy_masks(S, cfg.on_policy_prompt)
            div_mask_T = jnp.where(use, sampled_div, div_mask_T)
            ce_mask_T = jnp.where(use, sampled_ce, ce_mask_T)
            on_policy = use.astype(jnp.float32)
        inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
        teacher = nnx.merge(teacher_graphdef, aux)
        div_mask_BT = jnp.broadcast_to(div_mask_T, targets_BT.shape)
        if features:
            teacher_logits_BTV, t_hidden = teacher(inputs_BT, return_hidden=True)
            student_logits_BTV, s_hidden = model(inputs_BT, rng=model_rng, return_hidden=True)
            teacher_logits_BTV = jax.lax.stop_gradient(teacher_logits_BTV)
        else:
            teacher_logits_BTV = jax.lax.stop_gradient(teacher(inputs_BT))
            student_logits_BTV = model(inputs_BT, rng=model_rng)
        loss, metrics = loss_fn(
            student_logits_BTV,
            teacher_logits_BTV,
            targets_BT,
            div_mask_BT,
            ce_mask_BT=jnp.broadcast_to(ce_mask_T, targets_BT.shape),
        )
        if features:
            proj = getattr(model, "feature_proj", None)
            feat = feature_loss(
                s_hidden[s_idx],
                t_hidden[t_idx],
                cfg.features,
                div_mask_BT,
                None if proj is None else proj[...],
            )
            loss = loss + cfg.feature_weight * feat
            metrics[FEATURE_METRIC] = feat
        metrics["distill/on_policy"] = on_policy
        return loss, metrics

    return objective
