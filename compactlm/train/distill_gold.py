"""Cross-tokenizer distillation, GOLD: byte-span alignment groups, chain-rule merging inside a
group, and the hybrid loss (a divergence on the tokens both vocabularies share, ULD on the rest).

GOLD ("General Online Logit Distillation", Hugging Face 2025; TRL's `GOLDTrainer`,
trl/experimental/gold/gold_trainer.py, class `ULDLoss` with `use_extended_uld=True`,
`uld_token_merge_strategy="bayesian"`, `uld_use_hybrid_loss=True`) extends ULD
(train/distill_uld.py) in three steps, reproduced here:

1. Alignment groups (`_align_by_byte_offsets`, formerly `_build_alignment_groups_from_ids`):
   both token streams are walked over the same text; a group closes where both prefixes end at
   the same byte. A group is the student tokens s_1 … s_a and the teacher tokens t_1 … t_b that
   cover exactly the same bytes (a, b >= 1). Here the boundaries are WindowAligner's
   (train/distill_uld.py): student position t aligned with teacher position j; a group runs from
   one aligned pair (t, j) to the next (t', j'), its tokens are student t+1 … t' and teacher
   j+1 … j', and it is kept only if both sides' bytes are verified equal on the host.

2. Merging inside a group (`_merge_probabilities_with_alignment_groups`, "bayesian"): the chain
   rule. One vector per side and group, indexed by that side's vocabulary,

       P_s[x] = q(s_1) · q(s_2 | s_1) ⋯ q(s_{a−1} | s_1 … s_{a−2}) · q(x | s_1 … s_{a−1}),

   the probability of the group's actual first a − 1 tokens followed by x (so P_s[s_a] is the
   probability of the group's text as the student tokenized it); P_t likewise with the teacher
   over b tokens. Both sum to the probability of their prefix, not to 1 (GOLD does not
   renormalize). One-token groups are the plain next-token distributions.

3. The hybrid loss (`_compute_hybrid_uld_loss`, vocabulary map `_initialize_vocabulary_mapping`):
   the vocabulary map pairs teacher id u with student id v when the two tokens are the same
   string; on those columns (M) the two merged vectors are compared directly with a divergence,
   on the remaining columns (U: each side's unmatched ids) with ULD's sorted, zero-padded L1:

       GOLD = w_M · D(P_t[M_t], P_s[M_s]) + w_U · Σ_i |sort↓(P_t[U_t])_i − sort↓(P_s[U_s])_i|

   with w_M = |M| / V_teacher and w_U = 1 − w_M (TRL's adaptive weights, hybrid weights None), or
   fixed `distill.gold_matched_weight` / `gold_unmatched_weight`. TRL's D is its generalized JSD
   with GOLDConfig.beta on the (unnormalized) vectors; here D is `distill.loss` with
   `distill.beta` / `distill.skew` (train/distill.py::divergence): `distill.loss=jsd` is TRL's
   (its β convention is ours, train/distill.py's docstring). On unnormalized vectors only jsd
   (0 < β < 1) and tvd stay >= 0 column by column (log-sum inequality); fkl / rkl can go
   negative there, as TRL's β = 0 / 1 ends can.

The loss is `alpha · GOLD + (1 − alpha) · CE`, mean over groups, CE over every position, as
ULD's (train/distill_uld.py: no T² factor; both softmaxes at `distill.temperature`). When both
tokenizers are the same, every group is one token on each side, the map covers every string
token and the eos, and GOLD is D itself wherever no other special carries mass (w_M = 1).

Deliberate differences from TRL, each small:
  * the vocabulary map compares token BYTE strings (our tokenizers' `token_bytes`), not vocab
    strings, so it works across byte-level and SentencePiece vocabularies; the first id of each
    byte string on each side is kept (TRL's string keys are unique by construction); specials
    are left out except eos ↔ eos (TRL matches specials only when their strings agree);
  * merging is in log space with exact logs (TRL multiplies probabilities clamped at 1e-8 and
    its JSD takes log(max(p, 1e-8))): equal wherever every probability is above 1e-8;
  * TRL's default merge is "observed" (first position's distribution × the later tokens'
    probabilities, with a one-position shift its own docs correct by adding "bayesian"); only
    the chain-rule "bayesian" merge is implemented;
  * the mean runs over every group of the batch (TRL: per sequence, then over sequences), and
    the window's last group (it ends past the last aligned pair) is dropped, as are groups whose
    bytes do not verify (invalid UTF-8 inside a window);
  * windows of raw text, not chat completions: no eos skipping, CE from `alpha`.

Data contract of a packed step batch (int32 [B, X], split by `unpack`):
    tokens    [B, S+1]  the student's window (S = train.seq_len)
    t_ids     [B, L]    the teacher's ids of the same bytes, −1 past the end (L = teacher_len)
    group_j   [B, S]    a group starts at student position t: teacher position j, −1 = none
    s_last    [B, S]    the student position predicting the group's last student token
    t_last    [B, S]    the teacher position predicting the group's last teacher token
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from compactlm.train.distill import DistillConfig, _masked_mean, _token_nll, divergence
from compactlm.train.distill_uld import WindowAligner, sorted_l1

# Metrics of a GOLD step (docs/architecture.md §7): split/name. divergence = the weighted sum.
METRICS = (
    "distill/divergence",
    "distill/matched",
    "distill/unmatched",
    "distill/ce",
    "distill/teacher_ce",
    "distill/agreement",
    "distill/aligned",
)


# ---------------------------------------------------------------------------------------------
# The vocabulary map (host side, once per run)
# ---------------------------------------------------------------------------------------------


def match_vocabularies(
    student_bytes: list[bytes], teacher_bytes: list[bytes], student_eos: int, teacher_eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """(student ids, teacher ids), pairs of tokens with the same non-empty byte string, plus
    eos ↔ eos; sorted by teacher id (TRL's `sorted(teacher_matched_ids)`). One id per byte
    string on each side (the first), so the map is one-to-one."""
    first_student: dict[bytes, int] = {}
    for i, piece in enumerate(student_bytes):
        if piece:
            first_student.setdefault(piece, i)
    pairs = {teacher_eos: student_eos}
    seen: set[bytes] = set()
    for u, piece in enumerate(teacher_bytes):
        if piece and piece not in seen:
            seen.add(piece)
            if piece in first_student:
                pairs[u] = first_student[piece]
    t_ids = np.array(sorted(pairs), np.int32)
    s_ids = np.array([pairs[u] for u in t_ids], np.int32)
    return s_ids, t_ids


def vocabulary_map(student_tok, teacher_tok) -> tuple[np.ndarray, np.ndarray]:
    """match_vocabularies of two tokenizers (compactlm/data/tokenizer.py's `token_bytes`)."""
    return match_vocabularies(
        student_tok.token_bytes(), teacher_tok.token_bytes(), student_tok.eos_id, teacher_tok.eos_id
    )


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _prefix_sum(lp_BS: Array, start_BG: Array, stop_BG: Array) -> Array:
    """Σ lp[b, u] over start <= u < stop, per (b, g): a masked sum, not a difference of
    cumulative sums (that would cancel ~|Σ log p| ≈ 10² nats to f32 rounding)."""
    u = jnp.arange(lp_BS.shape[1])
    inside_BGS = (u >= start_BG[..., None]) & (u < stop_BG[..., None])
    return jnp.sum(jnp.where(inside_BGS, lp_BS[:, None, :], 0.0), axis=-1)


def merged_log_probs(
    log_probs_BTV: Float[Array, "B T V"],
    targets_BT: Int[Array, "B T"],
    start_BG: Int[Array, "B G"],
    last_BG: Int[Array, "B G"],
) -> Float[Array, "B G V"]:
    """Chain-rule merge of a group whose predictions run from position `start` to `last`:
    log q(· | prefix) at `last` plus the log-probabilities of the actual tokens predicted at
    start … last − 1 (module docstring, step 2)."""
    lp_BT = jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]
    prefix_BG = _prefix_sum(lp_BT, start_BG, last_BG)
    base_BGV = jnp.take_along_axis(log_probs_BTV, last_BG[..., None], axis=1)
    return base_BGV + prefix_BG[..., None]


class GoldLoss:
    """`alpha · GOLD + (1 − alpha) · CE` over alignment groups, from a DistillConfig and the
    vocabulary map (student ids, teacher ids).

    Called with the student's logits [B, S, Vs], the teacher's at its own positions [B, L−1, Vt]
    (under stop_gradient), the groups (group_j, s_last, t_last: [B, S], module docstring), the
    student's targets [B, S] and the teacher's [B, L−1] (−1 = padding). `first_bytes` (student
    table, teacher table) give distill/agreement at group starts, as ULD's."""

    def __init__(
        self,
        cfg: DistillConfig,
        vocab_map: tuple[np.ndarray, np.ndarray],
        first_bytes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if cfg.cross_tokenizer != "gold":
            raise ValueError("GoldLoss needs distill.cross_tokenizer=gold")
        self.cfg = cfg
        self.s_matched = np.asarray(vocab_map[0], np.int32)
        self.t_matched = np.asarray(vocab_map[1], np.int32)
        self.first_bytes = first_bytes

    def weights(self, teacher_vocab: int) -> tuple[float, float]:
        """(w_M, w_U): fixed, or TRL's adaptive |M| / V_teacher and its complement."""
        c = self.cfg
        if c.gold_matched_weight is None:
            w = len(self.t_matched) / max(1, teacher_vocab)
            return w, 1.0 - w
        return c.gold_matched_weight, c.gold_unmatched_weight

    def per_group(
        self, log_pm_BGV: Float[Array, "B G Vt"], log_qm_BGV: Float[Array, "B G Vs"]
    ) -> tuple[Array, Array, Array]:
        """(GOLD, matched part, unmatched part) per group from the merged log-vectors."""
        c = self.cfg
        Vt, Vs = log_pm_BGV.shape[-1], log_qm_BGV.shape[-1]
        # the map may name ids past a model's logits only if the model is smaller than its
        # tokenizer; keep the pairs both models can score
        keep = (self.t_matched < Vt) & (self.s_matched < Vs)
        t_m, s_m = self.t_matched[keep], self.s_matched[keep]
        t_u = np.setdiff1d(np.arange(Vt), t_m)  # static: resolved at trace time
        s_u = np.setdiff1d(np.arange(Vs), s_m)
        zero = jnp.zeros(log_pm_BGV.shape[:-1], jnp.float32)
        matched = zero
        if len(t_m):
            matched = divergence(
                log_pm_BGV[..., t_m], log_qm_BGV[..., s_m], c.loss, beta=c.beta, skew=c.skew
            )
        unmatched = zero
        if len(t_u) and len(s_u):  # TRL: only when both sides have unmatched ids
            unmatched = sorted_l1(jnp.exp(log_pm_BGV[..., t_u]), jnp.exp(log_qm_BGV[..., s_u]))
        w_m, w_u = self.weights(Vt)
        return w_m * matched + w_u * unmatched, matched, unmatched

    def __call__(
        self,
        student_logits_BSV: Float[Array, "B S Vs"],
        teacher_logits_BLV: Float[Array, "B L Vt"],
        group_j_BS: Int[Array, "B S"],
        s_last_BS: Int[Array, "B S"],
        t_last_BS: Int[Array, "B S"],
        targets_BS: Int[Array, "B S"],
        teacher_targets_BL: Int[Array, "B L"],
    ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        c = self.cfg
        student_logits_BSV = student_logits_BSV.astype(jnp.float32)
        teacher_logits_BLV = teacher_logits_BLV.astype(jnp.float32)
        log_q = jax.nn.log_softmax(student_logits_BSV / c.temperature, axis=-1)
        log_p = jax.nn.log_softmax(teacher_logits_BLV / c.temperature, axis=-1)
        grouped_BS = (group_j_BS >= 0).astype(jnp.float32)
        j_BS = jnp.maximum(group_j_BS, 0)
        t_starts = jnp.arange(targets_BS.shape[1])[None, :] + jnp.zeros_like(s_last_BS)
        log_qm = merged_log_probs(log_q, targets_BS, t_starts, s_last_BS)
        t_targets = jnp.maximum(teacher_targets_BL, 0)
        log_pm = merged_log_probs(log_p, t_targets, j_BS, t_last_BS)
        gold_BS, matched_BS, unmatched_BS = self.per_group(log_pm, log_qm)
        gold = _masked_mean(gold_BS, grouped_BS)
        ones = jnp.ones(targets_BS.shape, jnp.float32)
        ce = _masked_mean(_token_nll(student_logits_BSV, targets_BS), ones)
        t_valid_BL = (teacher_targets_BL >= 0).astype(jnp.float32)
        t_nll_BL = _token_nll(teacher_logits_BLV, t_targets)
        loss = c.alpha * gold + (1.0 - c.alpha) * ce
        metrics = {
            "nll": ce,
            "distill/divergence": gold,
            "distill/matched": _masked_mean(matched_BS, grouped_BS),
            "distill/unmatched": _masked_mean(unmatched_BS, grouped_BS),
            "distill/ce": ce,
            "distill/teacher_ce": jax.lax.stop_gradient(_masked_mean(t_nll_BL, t_valid_BL)),
            "distill/aligned": jnp.mean(grouped_BS),
        }
        if self.first_bytes is not None:
            t_at_BSV = jnp.take_along_axis(teacher_logits_BLV, j_BS[..., None], axis=1)
            s_first = jnp.asarray(self.first_bytes[0])[jnp.argmax(student_logits_BSV, -1)]
            t_first = jnp.asarray(self.first_bytes[1])[jnp.argmax(t_at_BSV, -1)]
            agree_BS = ((s_first == t_first) & (s_first >= 0)).astype(jnp.float32)
            metrics["distill/agreement"] = _masked_mean(agree_BS, grouped_BS)
        return loss, metrics


# ---------------------------------------------------------------------------------------------
# Alignment groups (host side, NumPy)
# ---------------------------------------------------------------------------------------------


def _segments(table: list[bytes], ids) -> list[bytes | None]:
    """The text of `ids` as byte runs with None for each special (an eos is one unit)."""
    out: list[bytes | None] = []
    run = b""
    for i in ids:
        piece = table[int(i)]
        if piece:
            run += piece
        else:
            out += [run, None]
            run = b""
    out.append(run)
    return out


class GroupAligner:
    """Student windows → (teacher ids, alignment groups), the host half of
    `distill.cross_tokenizer=gold`: WindowAligner's re-tokenization and byte boundaries
    (train/distill_uld.py), each pair of consecutive aligned positions closing one group whose
    bytes are checked equal on both sides."""

    def __init__(self, student_tok, teacher_tok, teacher_len: int) -> None:
        self.windows = WindowAligner(student_tok, teacher_tok, teacher_len)

    def window(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One student window [S+1] → (teacher ids [L], group_j, s_last, t_last [S])."""
        w = self.windows
        tokens = np.asarray(tokens, np.int64)
        t_ids, align = w.window(tokens)
        S = len(tokens) - 1
        group_j = np.full(S, -1, np.int32)
        s_last = np.zeros(S, np.int32)
        t_last = np.zeros(S, np.int32)
        starts = np.flatnonzero(align >= 0)
        for t, t2 in zip(starts[:-1], starts[1:], strict=True):
            j, j2 = int(align[t]), int(align[t2])
            # student tokens t+1 … t2, teacher tokens j+1 … j2: the same bytes?
            if _segments(w.s_bytes, tokens[t + 1 : t2 + 1]) == _segments(
                w.t_bytes, t_ids[j + 1 : j2 + 1]
            ):
                group_j[t], s_last[t], t_last[t] = j, t2 - 1, j2 - 1
        return t_ids, group_j, s_last, t_last

    def batch(self, tokens_BS1: np.ndarray) -> np.ndarray:
        """Packed [B, (S+1) + teacher_len + 3·S] int32 (module docstring: data contract)."""
        rows = []
        for row in np.asarray(tokens_BS1):
            rows.append(np.concatenate([row.astype(np.int32), *self.window(row)]))
        return np.stack(rows)


# ---------------------------------------------------------------------------------------------
# The objective for train/step.py's build()
# ---------------------------------------------------------------------------------------------


def unpack(packed_BX: Array, seq_len: int, teacher_len: int) -> tuple[Array, ...]:
    """(tokens [B, S+1], teacher ids [B, L], group_j, s_last, t_last [B, S])."""
    S, L = seq_len, teacher_len
    tokens = packed_BX[:, : S + 1]
    t_ids = packed_BX[:, S + 1 : S + 1 + L]
    rest = packed_BX[:, S + 1 + L :]
    return tokens, t_ids, rest[:, :S], rest[:, S : 2 * S], rest[:, 2 * S : 3 * S]


def make_objective(
    cfg: DistillConfig,
    teacher_graphdef: nnx.GraphDef,
    seq_len: int,
    teacher_len: int,
    vocab_map: tuple[np.ndarray, np.ndarray],
    first_bytes_pair: tuple[np.ndarray, np.ndarray] | None = None,
) -> Callable[[nnx.Module, jax.Array, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """objective(student, packed_BX, rng, teacher_state) -> (loss, metrics) for build(); the
    teacher's ids and the groups travel inside the batch (distill_uld.make_objective: why)."""
    loss_fn = GoldLoss(cfg, vocab_map, first_bytes_pair)

    def objective(model, packed_BX, rng, aux):
        tokens_BS1, t_ids_BL, group_j, s_last, t_last = unpack(packed_BX, seq_len, teacher_len)
        model_rng, _, _ = jax.random.split(rng, 3)  # distill_step's split: the same dropout
        teacher = nnx.merge(teacher_graphdef, aux)
        t_in = jnp.maximum(t_ids_BL[:, :-1], 0)  # padding → id 0: causal, never in a group
        teacher_logits = jax.lax.stop_gradient(teacher(t_in))
        student_logits = model(tokens_BS1[:, :-1], rng=model_rng)
        loss, metrics = loss_fn(
            student_logits,
            teacher_logits,
            group_j,
            s_last,
            t_last,
            tokens_BS1[:, 1:],
            t_ids_BL[:, 1:],
        )
        metrics["distill/on_policy"] = jnp.float32(0.0)
        return loss, metrics

    return objective
