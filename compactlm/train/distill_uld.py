"""Cross-tokenizer distillation: the Universal Logit Distillation loss and byte-offset alignment.

ULD (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
Distillation Loss for LLMs", arXiv 2402.12030, §3): teacher and student predict over different
vocabularies, so no KL between them is defined. ULD compares the two probability VECTORS with
token identities thrown away: each is sorted in decreasing order, the shorter one zero-padded to
the longer one's length, and the loss is

    ULD(p, q) = Σ_i |p_(i) − q_(i)|          (p_(1) ≥ p_(2) ≥ …, the same for q)

(the paper's closed form, which it presents as the Wasserstein-1 distance under its "uniform
support" construction: both sorted vectors placed on the same ranks 1 … V with one transport
cost between any two different ranks). What holds exactly (tests/train/test_distill_uld.py):

  * it is invariant to any permutation of either vocabulary (the point of ULD);
  * it equals min over bijections π of ‖p − π(q)‖₁ (matching sorted to sorted is an optimal
    assignment for |x − y|): the best token-to-token matching of the two vocabularies;
  * on common ranks, with cost 1 between different ranks (the paper's uniform cost), optimal
    transport is the total variation ½ Σ |p_(i) − q_(i)|: ULD is TWICE that W1 (a constant
    factor, absorbed by λ);
  * it is NOT the W1 of the rank line with unit spacing, Σ_k |CDF_p(k) − CDF_q(k)| (cost |i − j|
    charges how far mass moves): since |i − j| ≥ 1[i ≠ j], line-W1 ≥ ULD / 2, with equality
    iff an optimal plan moves mass by one rank at most (p = (½, ½, 0), q = (½, ¼, ¼): ULD = ½,
    line-W1 = ¼ = ULD / 2; p = (1, 0, 0), q = (⅓, ⅓, ⅓): ULD = 4/3, line-W1 = 1 > ULD / 2).

The paper adds it to the student's hard-label CE with a weight λ (L = CE + λ·ULD, §3); here
`distill.alpha` mixes the two as everywhere in train/distill.py,
`alpha · ULD + (1 − alpha) · CE`, which is the paper's loss times (1 − alpha) with
λ = alpha / (1 − alpha) (alpha = 0.6 ↔ λ = 1.5). No T² factor: Hinton's T² compensates the
1/T² scale of the KL gradient at high T; ULD's gradient through probabilities has no such
scale, so none is applied (at T = 1 it would be 1 anyway). Both softmaxes run at
`distill.temperature` (the paper's τ).

Alignment by bytes (host side, `WindowAligner`). The student's window and the teacher's
re-tokenization cover the same bytes. Student position t (inputs 0 … t, predicting token t + 1)
is paired with teacher position j iff teacher tokens 0 … j end at the same byte offset as
student tokens 0 … t: both distributions then condition on the same text and predict the token
that starts at the same byte. This is the boundary rule of GOLD's alignment groups (TRL
`GOLDTrainer._build_alignment_groups_from_ids`: decode both token streams, cut a group where
both prefixes are the same text); the pair compared is the first token of each group. GOLD
additionally merges the probabilities of the tokens inside a group; ULD here does not (positions
inside a group are not aligned and carry only the hard-label CE); `distill.cross_tokenizer=gold`
does (train/distill_gold.py). The original ULD code pairs tokens by
index after truncating to the shorter sequence (its tasks compare answers a few tokens long);
aligning by bytes keeps the contexts equal on 128-token windows. A byte-level student against a
BPE teacher is aligned at every teacher token boundary (≈ 1 student position in 3 on pydocs).

Special tokens (<eos> between documents) count as ONE offset unit on both sides, so an <eos> in
the student's window is paired with the <eos> the re-tokenization puts in the same place.

Data contract of a packed step batch (int32 [B, X], split by `unpack`):
    tokens    [B, S+1]  the student's window (S = train.seq_len)
    t_ids     [B, L]    the teacher's ids of the same bytes, −1 past the end (L = teacher_len)
    align     [B, S]    teacher position j aligned with student position t, −1 = none
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

from compactlm.train.distill import DistillConfig, _masked_mean, _token_nll

CROSS_TOKENIZER = ("none", "uld", "gold")  # gold: train/distill_gold.py
# Metrics of a ULD step (docs/architecture.md §7): split/name.
METRICS = (
    "distill/divergence",
    "distill/ce",
    "distill/teacher_ce",
    "distill/agreement",
    "distill/aligned",
)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def uld_distance(
    teacher_logits: Float[Array, "*B Vt"],
    student_logits: Float[Array, "*B Vs"],
    temperature: float = 1.0,
) -> Float[Array, "*B"]:
    """Per-position ULD: Σ_i |p_(i) − q_(i)| over the sorted, zero-padded probability vectors
    (module docstring: what this distance is and is not). In [0, 2]; f32."""
    p = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    q = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return sorted_l1(p, q)


def sorted_l1(p: Float[Array, "*B Vt"], q: Float[Array, "*B Vs"]) -> Float[Array, "*B"]:
    """Σ_i |p_(i) − q_(i)| of two non-negative vectors, each sorted decreasing and the shorter
    zero-padded: ULD on probabilities (also GOLD's unmatched part, train/distill_gold.py, where
    the vectors are sub-vectors that need not sum to 1)."""
    width = max(p.shape[-1], q.shape[-1])

    def ranked(x):
        x = -jnp.sort(-x.astype(jnp.float32), axis=-1)  # decreasing: ULD's rank order
        pad = width - x.shape[-1]
        return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)]) if pad else x

    return jnp.sum(jnp.abs(ranked(p) - ranked(q)), axis=-1)


class UldLoss:
    """`alpha · ULD + (1 − alpha) · CE` over byte-aligned positions, from a DistillConfig.

    Called with the student's logits [B, S, Vs], the teacher's at its own positions [B, L−1, Vt]
    (under stop_gradient), the alignment [B, S] (−1 = none), the student's targets [B, S], and
    the teacher's targets [B, L−1] (−1 = padding) for distill/teacher_ce. `first_bytes` (student
    table, teacher table; −1 for specials) give distill/agreement: at aligned positions, do the
    two argmax tokens start with the same byte."""

    def __init__(
        self,
        cfg: DistillConfig,
        first_bytes: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if cfg.cross_tokenizer != "uld":
            raise ValueError("UldLoss needs distill.cross_tokenizer=uld")
        self.cfg = cfg
        self.first_bytes = first_bytes

    def __call__(
        self,
        student_logits_BSV: Float[Array, "B S Vs"],
        teacher_logits_BLV: Float[Array, "B L Vt"],
        align_BS: Int[Array, "B S"],
        targets_BS: Int[Array, "B S"],
        teacher_targets_BL: Int[Array, "B L"],
    ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        c = self.cfg
        student_logits_BSV = student_logits_BSV.astype(jnp.float32)
        teacher_logits_BLV = teacher_logits_BLV.astype(jnp.float32)
        aligned_BS = (align_BS >= 0).astype(jnp.float32)
        idx_BS = jnp.maximum(align_BS, 0)
        t_at_BSV = jnp.take_along_axis(teacher_logits_BLV, idx_BS[..., None], axis=1)
        uld = _masked_mean(uld_distance(t_at_BSV, student_logits_BSV, c.temperature), aligned_BS)
        ones = jnp.ones(targets_BS.shape, jnp.float32)
        ce = _masked_mean(_token_nll(student_logits_BSV, targets_BS), ones)
        t_valid_BL = (teacher_targets_BL >= 0).astype(jnp.float32)
        t_nll_BL = _token_nll(teacher_logits_BLV, jnp.maximum(teacher_targets_BL, 0))
        loss = c.alpha * uld + (1.0 - c.alpha) * ce
        metrics = {
            "nll": ce,
            "distill/divergence": uld,
            "distill/ce": ce,
            "distill/teacher_ce": jax.lax.stop_gradient(_masked_mean(t_nll_BL, t_valid_BL)),
            "distill/aligned": jnp.mean(aligned_BS),
        }
        if self.first_bytes is not None:
            s_first = jnp.asarray(self.first_bytes[0])[jnp.argmax(student_logits_BSV, -1)]
            t_first = jnp.asarray(self.first_bytes[1])[jnp.argmax(t_at_BSV, -1)]
            agree_BS = ((s_first == t_first) & (s_first >= 0)).astype(jnp.float32)
            metrics["distill/agreement"] = _masked_mean(agree_BS, aligned_BS)
        return loss, metrics


# ---------------------------------------------------------------------------------------------
# Byte offsets and alignment (host side, NumPy)
# ---------------------------------------------------------------------------------------------


def offset_lengths(tokenizer) -> np.ndarray:
    """Offset units each id covers: its UTF-8 byte count, and 1 for a special / unused id (so
    an <eos> is one unit on both sides, paired with the other tokenizer's <eos>)."""
    lengths = np.asarray(tokenizer.token_byte_lengths(), np.int64).copy()
    lengths[lengths == 0] = 1
    return lengths


def token_ends(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """End offset (exclusive) of each token: cumulative `lengths[ids]`."""
    return np.cumsum(lengths[np.asarray(ids, np.int64)])


def align_positions(student_ends: np.ndarray, teacher_ends: np.ndarray) -> np.ndarray:
    """For each student position t, the teacher position j with teacher_ends[j] ==
    student_ends[t] (the same text before both predictions), else −1. Both strictly
    increasing."""
    j = np.searchsorted(teacher_ends, student_ends)
    j_clipped = np.minimum(j, len(teacher_ends) - 1)
    hit = (j < len(teacher_ends)) & (teacher_ends[j_clipped] == student_ends)
    return np.where(hit, j_clipped, -1).astype(np.int32)


def _utf8_core(data: bytes) -> tuple[int, int]:
    """(lead, end): data[lead:end] drops a partial UTF-8 character at either edge (a window can
    start or stop inside one); at most 3 bytes each side."""
    lead = 0
    while lead < min(3, len(data)) and 0x80 <= data[lead] < 0xC0:
        lead += 1
    end = len(data)
    for back in range(1, min(4, end - lead) + 1):  # the last lead byte and its continuations
        b = data[end - back]
        if b < 0x80:
            break
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if need > back:
                end -= back
            break
    return lead, end


class WindowAligner:
    """Student windows → (teacher ids, alignment), the host half of `distill.cross_tokenizer`.

    Each student window is cut at its special tokens into runs of text; each run's bytes are
    decoded (UTF-8, a partial character at either edge dropped) and re-encoded by the teacher's
    tokenizer, the teacher's <eos> standing where the student's special stood. A run whose
    re-encoding does not reproduce its bytes (invalid UTF-8 in the middle) is kept as context
    and left unaligned. The result is right-padded (−1) or cut to `teacher_len` ids, so the jitted
    step sees one shape; positions past the cut are unaligned."""

    def __init__(self, student_tok, teacher_tok, teacher_len: int) -> None:
        self.s_tok, self.t_tok, self.teacher_len = student_tok, teacher_tok, teacher_len
        self.s_bytes = student_tok.token_bytes()
        self.t_bytes = teacher_tok.token_bytes()
        self.s_len, self.t_len = offset_lengths(student_tok), offset_lengths(teacher_tok)

    def window(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One student window [S+1] → (teacher ids [teacher_len], −1 padded; align [S])."""
        tokens = np.asarray(tokens, np.int64)
        s_ends = token_ends(tokens, self.s_len)
        t_ids: list[int] = []
        t_ends: list[int] = []
        ok: list[bool] = []  # may this teacher position be aligned
        pos, i = 0, 0
        while i < len(tokens):
            if not self.s_bytes[tokens[i]]:  # a special: one unit, the teacher's eos
                pos += 1
                t_ids.append(self.t_tok.eos_id)
                t_ends.append(pos)
                ok.append(True)
                i += 1
                continue
            k = i
            while k < len(tokens) and self.s_bytes[tokens[k]]:
                k += 1
            data = b"".join(self.s_bytes[t] for t in tokens[i:k])
            lead, end = _utf8_core(data)
            ids = self.t_tok.encode(data[lead:end].decode("utf-8", errors="replace"))
            pieces = [self.t_bytes[t] for t in ids]
            exact = b"".join(pieces) == data[lead:end]
            ends = pos + lead + np.cumsum([len(p) for p in pieces], dtype=np.int64)
            t_ids.extend(int(t) for t in ids)
            t_ends.extend(int(e) for e in ends)
            ok.extend([exact] * len(ids))
            pos += len(data)
            i = k
        L = self.teacher_len
        # the teacher's last kept id is only a target: its position has no logits
        t_ends_arr = np.asarray(t_ends[: L - 1], np.int64)
        usable = np.asarray(ok[: L - 1], bool)
        if len(t_ends_arr):
            align = align_positions(s_ends[:-1], t_ends_arr)
            align[(align >= 0) & ~usable[np.maximum(align, 0)]] = -1
        else:
            align = np.full(len(tokens) - 1, -1, np.int32)
        ids_out = np.full(L, -1, np.int32)
        ids_out[: min(L, len(t_ids))] = t_ids[:L]
        return ids_out, align

    def batch(self, tokens_BS1: np.ndarray) -> np.ndarray:
        """Packed [B, (S+1) + teacher_len + S] int32 (module docstring: data contract)."""
        rows = []
        for row in np.asarray(tokens_BS1):
            t_ids, align = self.window(row)
            rows.append(np.concatenate([row.astype(np.int32), t_ids, align]))
        return np.stack(rows)


def first_bytes(tokenizer) -> np.ndarray:
    """The first byte of each id's text, −1 for specials / unused ids (distill/agreement)."""
    return np.array([p[0] if p else -1 for p in tokenizer.token_bytes()], np.int32)


def teacher_length(student_tok, seq_len: int, teacher_max_seq_len: int) -> int:
    """Teacher ids per window: enough for the window's offset units ((S+1) × the longest
    student token, one teacher token covering at least one unit) plus one, capped at the
    teacher's context + 1 (its inputs are all ids but the last)."""
    longest = int(offset_lengths(student_tok).max())
    return min((seq_len + 1) * longest + 1, teacher_max_seq_len + 1)


# ---------------------------------------------------------------------------------------------
# The objective for train/step.py's build()
# ---------------------------------------------------------------------------------------------


def unpack(packed_BX: Array, seq_len: int, teacher_len: int) -> tuple[Array, Array, Array]:
    """(tokens [B, S+1], teacher ids [B, L] with −1 padding, align [B, S])."""
    S, L = seq_len, teacher_len
    tokens = packed_BX[:, : S + 1]
    t_ids = packed_BX[:, S + 1 : S + 1 + L]
    align = packed_BX[:, S + 1 + L : S + 1 + L + S]
    return tokens, t_ids, align


def make_objective(
    cfg: DistillConfig,
    teacher_graphdef: nnx.GraphDef,
    seq_len: int,
    teacher_len: int,
    first_bytes_pair: tuple[np.ndarray, np.ndarray] | None = None,
) -> Callable[[nnx.Module, jax.Array, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]:
    """objective(student, packed_BX, rng, teacher_state) -> (loss, metrics) for build(). The
    teacher's ids travel inside the batch (like the stored cache's columns), so gradient
    accumulation and data sharding split them exactly as they split the tokens."""
    loss_fn = UldLoss(cfg, first_bytes_pair)

    def objective(model, packed_BX, rng, aux):
        tokens_BS1, t_ids_BL, align_BS = unpack(packed_BX, seq_len, teacher_len)
        model_rng, _, _ = jax.random.split(rng, 3)  # distill_step's split: the same dropout
        teacher = nnx.merge(teacher_graphdef, aux)
        t_in = jnp.maximum(t_ids_BL[:, :-1], 0)  # padding → id 0: causal, never aligned
        teacher_logits = jax.lax.stop_gradient(teacher(t_in))
        student_logits = model(tokens_BS1[:, :-1], rng=model_rng)
        loss, metrics = loss_fn(
            student_logits, teacher_logits, align_BS, tokens_BS1[:, 1:], t_ids_BL[:, 1:]
        )
        metrics["distill/on_policy"] = jnp.float32(0.0)
        return loss, metrics

    return objective
