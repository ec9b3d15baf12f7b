"""Teacher → student distillation losses: six divergences with stated directions, top-k buckets.

Notation (used everywhere below and in the README): p is the TEACHER's next-token distribution
and q = q_θ the STUDENT's, both at temperature T (p = softmax(z_teacher / T), q likewise).
KL(a ‖ b) = Σ_v a_v · log(a_v / b_v), with 0 · log(0 / b) = 0.

    fkl   KL(p ‖ q)                        forward KL (Hinton et al. 2015): mean-covering
    rkl   KL(q ‖ p)                        reverse KL (MiniLLM, Gu et al. 2024): mode-seeking
    jsd   β·KL(p ‖ m) + (1−β)·KL(q ‖ m),   generalized JSD (GKD, Agarwal et al. 2024, eq. 1),
          m = β·p + (1−β)·q
    skl   KL(p ‖ α·p + (1−α)·q)            skew KL (DistiLLM, Ko et al. 2024), α = skew
    srkl  KL(q ‖ α·q + (1−α)·p)            skew reverse KL (DistiLLM), α = skew
    tvd   ½ Σ_v |p_v − q_v|                total variation distance

jsd's β: as β → 0, m → q and jsd(β) = β·KL(p ‖ q) + O(β²), so jsd(β)/β → KL(p ‖ q) (forward);
as β → 1, m → p and jsd(β)/(1−β) → KL(q ‖ p) (reverse); β = ½ is the symmetric JSD (≤ ln 2).
The value itself goes to 0 at both ends, so, as TRL does, β = 0 exactly IS fkl and β = 1 exactly
IS rkl. This β is TRL's `GKDConfig.beta` exactly (trl `generalized_jsd_loss`: mixture
β·teacher + (1−β)·student, β·KL(teacher ‖ m) + (1−β)·KL(student ‖ m), β=0 → KL(teacher ‖
student), β=1 → KL(student ‖ teacher)). EasyDeL's `generalized_jsd_loss` (GKD trainer, `_fn.py`)
is NOT: its β = 0 is KL(student ‖ teacher) and β = 1 is KL(teacher ‖ student) (ends swapped), and
for 0 < β < 1 its mixture is (1−β)·teacher + β·student (ours at 1−β) while it weights
KL(teacher ‖ m) by β (ours at β); only β = ½ means the same in all three.

skew α: α = 0 gives fkl (resp. rkl); α → 1 gives 0. Since p / (α·p + (1−α)·q) ≤ 1/α, SKL and SRKL
are bounded by −ln α whatever q is (why DistiLLM's gradients stay finite where q ≈ 0).

Every divergence is multiplied by T² in the loss (Hinton et al. 2015 §2: the soft-target
gradients scale as 1/T², so T² keeps their size independent of T relative to the hard-label
term); at T = 1 the factor is 1. Metrics report the divergence WITHOUT the T² factor, in nats.

Top-k (`top_k = k`, 0 < k < V): per position, the k largest teacher probabilities keep their own
buckets and ONE tail bucket holds the remaining teacher mass; the student's mass is summed into
the same k + 1 buckets. Both are then proper distributions over k + 1 outcomes, so every loss
above stays a true divergence (≥ 0, = 0 iff the bucketed distributions agree, and ≤ the full-
vocabulary value by the data-processing inequality); k = V is the full loss.

All computation is float32, per position, then a masked mean over positions (per-token mean).
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

LOSSES = ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
LossName = Literal["fkl", "rkl", "jsd", "skl", "srkl", "tvd"]

# Metric names (docs/architecture.md §7: split/name). `nll` is the student's hard-label CE under the
# name the training loop logs as train/nll, so distilled and hard-label runs compare on one curve.
METRICS = ("distill/divergence", "distill/ce", "distill/teacher_ce", "distill/agreement")
# With distill.features: the feature term (its weight not applied), train/distill_features.py.
FEATURE_METRIC = "distill/feature"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """`distill.*` options of `compactlm distill`: which divergence, how it mixes with CE."""

    # Divergence between teacher p and student q (module docstring: directions and papers).
    loss: LossName = "fkl"
    # Softmax temperature of both distributions in the divergence (> 0). 2: Hinton-style soft
    # targets without washing out the small model's logits; the loss carries the T² factor.
    temperature: float = 2.0
    # loss = alpha · T² · divergence + (1 − alpha) · CE(hard labels); 1 = pure distillation.
    alpha: float = 0.5
    # jsd only: the GKD/TRL β in [0, 1]; 0 = fkl, 1 = rkl, 0.5 = symmetric JSD.
    beta: float = 0.5
    # skl / srkl only: the DistiLLM skew α in [0, 1] (their recommended 0.1); bound −ln α.
    skew: float = 0.1
    # Teacher buckets: keep the k most likely teacher tokens + one tail bucket (0 = full vocab).
    top_k: int = 0
    # On-policy fraction λ in [0, 1] (GKD): the probability that a step's continuations are
    # sampled from the student (then scored by the teacher) instead of taken from the data.
    on_policy: float = 0.0
    # On-policy steps keep this many leading data tokens of each sequence as the prompt.
    on_policy_prompt: int = 32
    # Sampling temperature of the student's on-policy continuations (1 = its own distribution).
    on_policy_temperature: float = 1.0
    # Teacher forward pass dtype: bfloat16 halves its memory and time where bf16 is native.
    teacher_dtype: Literal["float32", "bfloat16"] = "float32"
    # Start the student from the teacher's embedding/head and every other block (DistilBERT);
    # needs the teacher's per-layer shapes (train/distill_init.py).
    init_from_teacher: bool = False
    # Feature distillation (train/distill_features.py): "cosine" or "l2" between paired hidden
    # states, learned projection when widths differ; "none" = logits only (the default).
    features: Literal["none", "cosine", "l2"] = "none"
    # "s:t,s:t": student hidden state s against teacher state t (0 = embeddings, l = output of
    # block l). "" = every student block l against teacher block l·L_teacher/L_student.
    feature_layers: str = ""
    # Weight of the feature term added to the loss (>= 0). 1: cosine and l2 are O(1) at init,
    # like the logit terms.
    feature_weight: float = 1.0
    # Teacher and student with different tokenizers: "uld" = Universal Logit Distillation
    # (train/distill_uld.py: sorted-probability loss at byte-aligned positions, mixed with CE by
    # alpha); "gold" = TRL's GOLD (train/distill_gold.py: probabilities merged over groups of
    # tokens covering the same bytes; `loss` on tokens both vocabularies share, ULD on the
    # rest); "none" = one shared tokenizer, the divergence above (today's behaviour).
    cross_tokenizer: Literal["none", "uld", "gold"] = "none"
    # gold only: weight of the matched-token divergence and of the unmatched ULD part (>= 0,
    # set both or neither). None = TRL's adaptive weights: matched = matched ids / teacher
    # vocabulary, unmatched = 1 − that (a BPE-4096 teacher over a byte student: 0.063 / 0.937).
    gold_matched_weight: float | None = None
    gold_unmatched_weight: float | None = None
    # A run directory of the same student trained on hard labels only: the end-of-run report
    # prints it beside the teacher and the distilled student ("" = none).
    baseline: str = ""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown distill.loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        for name in ("alpha", "beta", "skew", "on_policy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"distill.{name} must be in [0, 1], got {value}")
        if self.top_k < 0:
            raise ValueError(f"distill.top_k must be >= 0 (0 = full vocabulary), got {self.top_k}")
        if self.on_policy_prompt < 1:
            raise ValueError(f"distill.on_policy_prompt must be >= 1, got {self.on_policy_prompt}")
        if self.teacher_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"distill.teacher_dtype={self.teacher_dtype!r}; valid: float32, bfloat16"
            )
        if self.on_policy_temperature < 0:
            raise ValueError("distill.on_policy_temperature must be >= 0 (0 = greedy)")
        from compactlm.train.distill_features import FEATURES, parse_pairs

        if self.features not in FEATURES:
            raise ValueError(
                f"unknown distill.features {self.features!r}; valid: {', '.join(FEATURES)}"
            )
        if not (self.feature_weight >= 0 and math.isfinite(self.feature_weight)):
            raise ValueError(f"distill.feature_weight must be >= 0, got {self.feature_weight}")
        parse_pairs(self.feature_layers)
        if self.feature_layers and self.features == "none":
            raise ValueError("distill.feature_layers needs distill.features=cosine or l2")
        if self.cross_tokenizer not in ("none", "uld", "gold"):
            raise ValueError(
                f"unknown distill.cross_tokenizer {self.cross_tokenizer!r}; valid: none, uld, gold"
            )
        gold_weights = (self.gold_matched_weight, self.gold_unmatched_weight)
        if (gold_weights[0] is None) != (gold_weights[1] is None):
            raise ValueError(
                "distill.gold_matched_weight and distill.gold_unmatched_weight: set both "
                "(fixed weights) or neither (adaptive)"
            )
        for name, value in zip(("matched", "unmatched"), gold_weights, strict=True):
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"distill.gold_{name}_weight must be >= 0, got {value}")
        if gold_weights[0] is not None and self.cross_tokenizer != "gold":
            raise ValueError("distill.gold_*_weight needs distill.cross_tokenizer=gold")
        if self.cross_tokenizer != "none":
            # ULD and GOLD compare distributions at byte-aligned data positions: options that
            # need one vocabulary or the student's own samples have no meaning there.
            for bad, why in (
                (self.top_k > 0, f"distill.top_k={self.top_k}"),
                (self.on_policy > 0, f"distill.on_policy={self.on_policy}"),
                (self.features != "none", f"distill.features={self.features}"),
                (self.init_from_teacher, "distill.init_from_teacher=true"),
            ):
                if bad:
                    raise ValueError(
                        f"{why} is not supported with "
                        f"distill.cross_tokenizer={self.cross_tokenizer}"
                    )

    def check_vocab(self, vocab_size: int) -> None:
        """top_k needs the vocabulary size, known only once the models are."""
        if self.top_k > vocab_size:
            raise ValueError(f"distill.top_k={self.top_k} exceeds the vocabulary size {vocab_size}")


# ---------------------------------------------------------------------------------------------
# Divergences on log-probabilities [..., V] (or [..., k+1] buckets); result [...] in nats.
# ---------------------------------------------------------------------------------------------


def kl(log_a: Float[Array, "*B V"], log_b: Float[Array, "*B V"]) -> Float[Array, "*B"]:
    """KL(a ‖ b) = Σ a·(log a − log b), with 0·log 0 = 0 exactly (log a = −inf allowed).

    Both logs are replaced by 0 where a = 0 before the subtraction, so neither the value nor the
    gradient sees −inf − (−inf) or 0·inf there (jnp.where alone would leak NaN into gradients).
    """
    a = jnp.exp(log_a)
    keep = a > 0
    terms = a * (jnp.where(keep, log_a, 0.0) - jnp.where(keep, log_b, 0.0))
    return jnp.sum(jnp.where(keep, terms, 0.0), axis=-1)


def log_mixture(log_a: Array, log_b: Array, w: float) -> Array:
    """log(w·a + (1−w)·b), exact at w ∈ {0, 1} (w is a static Python float)."""
    if w <= 0.0:
        return log_b
    if w >= 1.0:
        return log_a
    return jnp.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def divergence(
    log_p: Float[Array, "*B V"],
    log_q: Float[Array, "*B V"],
    loss: LossName,
    *,
    beta: float = 0.5,
    skew: float = 0.1,
) -> Float[Array, "*B"]:
    """Per-position divergence between teacher log_p and student log_q (module docstring)."""
    if loss == "fkl":
        return kl(log_p, log_q)
    if loss == "rkl":
        return kl(log_q, log_p)
    if loss == "jsd":
        if beta <= 0.0:
            return kl(log_p, log_q)
        if beta >= 1.0:
            return kl(log_q, log_p)
        log_m = log_mixture(log_p, log_q, beta)
        return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)
    if loss == "skl":
        return kl(log_p, log_mixture(log_p, log_q, skew))
    if loss == "srkl":
        return kl(log_q, log_mixture(log_q, log_p, skew))
    if loss == "tvd":
        return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
    raise ValueError(f"unknown distillation loss {loss!r}; valid: {', '.join(LOSSES)}")


def top_k_buckets(
    log_p: Float[Array, "*B V"], log_q: Float[Array, "*B V"], k: int
) -> tuple[Float[Array, "*B K1"], Float[Array, "*B K1"]]:
    """Teacher and student log-masses in the teacher's k largest tokens plus one tail bucket.

    Returns [..., k+1] log-probabilities (the tail last); k >= V returns the inputs unchanged
    (the full distributions: no tail bucket, nothing lumped). The tail is a logsumexp over the
    tokens outside the top k, not log(1 − Σ top-k): the subtraction would lose the tail's
    digits in f32 when the top k hold nearly all the mass.
    """
    V = log_p.shape[-1]
    if k <= 0 or k >= V:
        return log_p, log_q
    _, idx = jax.lax.top_k(log_p, k)
    return bucket_log_mass(log_p, idx), bucket_log_mass(log_q, idx)


def bucket_log_mass(log_x: Float[Array, "*B V"], idx: Int[Array, "*B K"]) -> Float[Array, "*B K1"]:
    """log_x's log-masses in the buckets `idx` (k distinct ids per position) plus one tail bucket
    with everything else: [..., k+1], the tail last. The one bucketing both the online top-k
    (top_k_buckets) and a stored teacher cache (train/distill_cache.py) use, so both compute
    the student's side with the same operations."""
    V, k = log_x.shape[-1], idx.shape[-1]
    top = jnp.take_along_axis(log_x, idx, axis=-1)
    flat_idx = idx.reshape(-1, k)
    rows = jnp.arange(flat_idx.shape[0])[:, None]
    in_top = jnp.zeros((flat_idx.shape[0], V), bool).at[rows, flat_idx].set(True)
    in_top = in_top.reshape(log_x.shape)
    tail = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_x), axis=-1, keepdims=True)
    return jnp.concatenate([top, tail], -1)


def _masked_mean(x_BT: Array, mask_BT: Array) -> Array:
    return jnp.sum(x_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def _token_nll(logits_BTV: Array, targets_BT: Array) -> Array:
    log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return log_z_BT - target_BT


class DistillLoss:
    """The mixed objective `alpha · T² · divergence + (1 − alpha) · CE` from a DistillConfig.

    Called with student and teacher logits (the teacher already under stop_gradient), targets
    and masks; returns (loss, metrics) with metrics `nll` and `distill/*` (METRICS).
    """

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def per_position(
        self, student_logits: Float[Array, "*B V"], teacher_logits: Float[Array, "*B V"]
    ) -> Float[Array, "*B"]:
        """The divergence at temperature T per position, nats, without the T² factor."""
        c = self.cfg
        log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / c.temperature, axis=-1)
        log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / c.temperature, axis=-1)
        log_p, log_q = top_k_buckets(log_p, log_q, c.top_k)
        return divergence(log_p, log_q, c.loss, beta=c.beta, skew=c.skew)

    def __call__(
        self,
        student_logits_BTV: Float[Array, "B T V"],
        teacher_logits_BTV: Float[Array, "B T V"],
        targets_BT: Int[Array, "B T"],
        mask_BT: Float[Array, "B T"] | None = None,
        *,
        ce_mask_BT: Float[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        """mask_BT selects the positions of the divergence; ce_mask_BT (default: mask_BT) those
        of the hard-label CE (on-policy steps: the data prompt only, not the student's samples)."""
        student_logits_BTV = student_logits_BTV.astype(jnp.float32)
        teacher_logits_BTV = teacher_logits_BTV.astype(jnp.float32)
        if mask_BT is None:
            mask_BT = jnp.ones(targets_BT.shape, jnp.float32)
        mask_BT = mask_BT.astype(jnp.float32)
        ce_mask_BT = mask_BT if ce_mask_BT is None else ce_mask_BT.astype(jnp.float32)
        div = _masked_mean(self.per_position(student_logits_BTV, teacher_logits_BTV), mask_BT)
        teacher_nll_BT = _token_nll(teacher_logits_BTV, targets_BT)
        teacher_top1_BT = jnp.argmax(teacher_logits_BTV, -1)
        return self._mix(
            div,
            student_logits_BTV,
            teacher_nll_BT,
            teacher_top1_BT,
            targets_BT,
            mask_BT,
            ce_mask_BT,
        )

    def from_buckets(
        self,
        student_logits_BTV: Float[Array, "B T V"],
        teacher_ids_BTK: Int[Array, "B T K"],
        teacher_log_p_BTK1: Float[Array, "B T K1"],
        teacher_nll_BT: Float[Array, "B T"],
        targets_BT: Int[Array, "B T"],
        mask_BT: Float[Array, "B T"] | None = None,
    ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        """The same loss and metrics from a teacher known only by its top-k buckets (a stored
        cache, train/distill_cache.py): its k ids per position, sorted by probability (the first
        is its top-1), its k + 1 bucket log-masses at T (tail last) and its NLL of the targets.
        The student's side runs the same operations as the online top-k path."""
        c = self.cfg
        student_logits_BTV = student_logits_BTV.astype(jnp.float32)
        if mask_BT is None:
            mask_BT = jnp.ones(targets_BT.shape, jnp.float32)
        mask_BT = mask_BT.astype(jnp.float32)
        log_q = jax.nn.log_softmax(student_logits_BTV / c.temperature, axis=-1)
        log_q = bucket_log_mass(log_q, teacher_ids_BTK)
        div_BT = divergence(teacher_log_p_BTK1, log_q, c.loss, beta=c.beta, skew=c.skew)
        div = _masked_mean(div_BT, mask_BT)
        return self._mix(
            div,
            student_logits_BTV,
            teacher_nll_BT,
            teacher_ids_BTK[..., 0],
            targets_BT,
            mask_BT,
            mask_BT,
        )

    def _mix(
        self,
        div,
        student_logits_BTV,
        teacher_nll_BT,
        teacher_top1_BT,
        targets_BT,
        mask_BT,
        ce_mask_BT,
    ):
        """loss = alpha · T² · div + (1 − alpha) · CE, and the metrics (METRICS, `nll`)."""
        c = self.cfg
        ce = _masked_mean(_token_nll(student_logits_BTV, targets_BT), ce_mask_BT)
        teacher_ce = _masked_mean(teacher_nll_BT, ce_mask_BT)
        agree_BT = jnp.argmax(student_logits_BTV, -1) == teacher_top1_BT
        loss = c.alpha * c.temperature**2 * div + (1.0 - c.alpha) * ce
        metrics = {
            "nll": ce,
            "distill/divergence": div,
            "distill/ce": ce,
            "distill/teacher_ce": jax.lax.stop_gradient(teacher_ce),
            "distill/agreement": _masked_mean(agree_BT.astype(jnp.float32), mask_BT),
        }
        return loss, metrics
