# ruff: noqa: F722  (jaxtyping shape strings are not forward references)
"""Token-level augmentation of training batches (`data.augment`): deletion, swap, insertion.

What they act on: the whole training window (inputs AND targets), so the model is trained on a
slightly corrupted text and still predicts each next token of that text — the EDA recipe of Wei &
Zou 2019 (random deletion, random swap, random insertion) applied to tokens, as in Xie et al.
2017's data noising for language models. Input-only corruption (span masking with the original
targets kept, the denoising variant; NEFTune's embedding noise) cannot be expressed in a
[B, T+1] window whose inputs and targets overlap, so it lives at the model's input
(models/input_noise.py, `model.span_mask_rate`, `model.neftune_alpha`) and uses the step RNG.

- dropout (random deletion): each token is deleted with probability `rate`; the window is
  refilled from the right with the corpus tokens that follow it, so the shape stays [B, T+1].
- swap (adjacent swap): each position i starts a swap with i+1 with probability `rate`, unless
  position i-1 drew a start too (so swaps never overlap): P(a position starts a swap) =
  rate·(1 - rate) (rate at position 0).
- insert (random insertion): before each token, with probability `rate`, a random ordinary
  (text) token id is inserted (uniform over the ids whose byte length is > 0, so specials such
  as <|eos|>/<|pad|> and unused padded ids are never inserted); the window is cut to T+1.

Determinism: every random draw is a counter-based hash (SplitMix64, as `get_batch`) of
(train.seed, step, op, position), so the augmented batch is a pure function of (seed, step):
a resumed run sees exactly the batches of the uninterrupted one. The windows start where
`get_batch` starts them, so `augment_rate=0` gives get_batch's batch bit for bit. Evaluation
never calls this (`eval_batches` reads the validation tokens directly).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Int32, Integer

from compactlm.data.config import check_augment
from compactlm.data.dataset import _splitmix64, batch_offsets

# One salt per op so the ops' random streams are independent of each other and of get_batch.
_SALT = {"dropout": 0xD0, "swap": 0x5A, "insert": 0x1E, "insert_id": 0x1D}


def uniform(seed: int, step: int, salt: int, shape: tuple[int, ...]) -> np.ndarray:
    """float64 in [0, 1): SplitMix64 of (seed, step, salt, flat index), top 53 bits."""
    mask = (1 << 64) - 1
    key = _splitmix64(np.array([int(seed) & mask], np.uint64))
    key = _splitmix64(key ^ np.uint64(int(step) & mask))
    key = _splitmix64(key ^ np.uint64(salt))
    bits = _splitmix64(key + np.arange(int(np.prod(shape)), dtype=np.uint64))
    return ((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def delete_tokens(
    tokens_BX: np.ndarray, u_BX: np.ndarray, rate: float, *, width: int, fill_id: int
) -> np.ndarray:
    """Drop tokens where u < rate, keep the rest in order, return the first `width` of each row
    (rows that keep fewer than `width` are padded with fill_id)."""
    keep_BX = u_BX >= rate
    order = np.argsort(~keep_BX, axis=1, kind="stable")[:, :width]  # kept positions first
    out = np.take_along_axis(tokens_BX, order, axis=1)
    short = np.arange(width)[None, :] >= keep_BX.sum(axis=1, keepdims=True)
    return np.where(short, fill_id, out).astype(tokens_BX.dtype)


def swap_adjacent(tokens_BX: np.ndarray, u_BX: np.ndarray, rate: float) -> np.ndarray:
    """Swap tokens i and i+1 where position i drew u < rate and i-1 did not (no overlaps)."""
    draw = u_BX[:, :-1] < rate
    start = draw.copy()
    start[:, 1:] &= ~draw[:, :-1]
    b, i = np.nonzero(start)
    out = tokens_BX.copy()
    out[b, i], out[b, i + 1] = tokens_BX[b, i + 1], tokens_BX[b, i]
    return out


def insert_tokens(
    tokens_BX: np.ndarray,
    u_BX: np.ndarray,
    u_id_BX: np.ndarray,
    rate: float,
    ordinary_ids: np.ndarray,
) -> np.ndarray:
    """Insert ordinary_ids[floor(u_id · n)] before each token where u < rate; keep the length."""
    B, X = tokens_BX.shape
    ins_BX = u_BX < rate
    shift_BX = np.cumsum(ins_BX, axis=1)  # insertions at or before each token
    out = np.empty((B, 2 * X), tokens_BX.dtype)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, X))
    cols = np.arange(X)[None, :] + shift_BX
    out[rows, cols] = tokens_BX
    pick = np.minimum((u_id_BX * ordinary_ids.size).astype(np.int64), ordinary_ids.size - 1)
    new_ids = ordinary_ids[pick]
    out[rows[ins_BX], cols[ins_BX] - 1] = new_ids[ins_BX]
    return out[:, :X]


def window_margin(names: tuple[str, ...], rate: float, width: int) -> int:
    """Extra corpus tokens to read past each window so deletion can refill it from the right.

    Of X = (W + 10√W + 10) / (1 - rate) tokens, Binomial(X, 1 - rate) survive: the mean
    W + 10√W + 10 is > 10 standard deviations above W for any rate < 1, so a row is padded
    (delete_tokens' fill) with probability far below 1e-20.
    """
    if "dropout" not in names or rate == 0.0:
        return 0
    return int(np.ceil((width + 10 * np.sqrt(width) + 10) / (1.0 - rate))) - width


def augmented_batch(
    tokens: Integer[np.ndarray, " N"],
    *,
    names: tuple[str, ...],
    rate: float,
    ordinary_ids: np.ndarray,
    fill_id: int,
    seed: int,
    step: int,
    batch_size: int,
    seq_len: int,
) -> Int32[np.ndarray, "B T1"]:  # T1 = seq_len + 1 (inputs and next-token targets)
    """get_batch's windows (same starts), extended to the right, with `names` applied in order.

    ordinary_ids: the token ids that stand for text (insertion draws from them); fill_id: the id
    that pads the end of the corpus and a (practically impossible) over-deleted row.
    """
    check_augment(names, rate)
    width = seq_len + 1
    X = width + window_margin(names, rate, width)
    starts = batch_offsets(
        tokens.size, seed=seed, step=step, batch_size=batch_size, seq_len=seq_len
    )
    idx = starts[:, None] + np.arange(X)[None, :]
    out = np.asarray(tokens[np.minimum(idx, tokens.size - 1)], dtype=np.int32)
    out = np.where(idx < tokens.size, out, fill_id).astype(np.int32)
    shape = out.shape
    for name in names:
        u = uniform(seed, step, _SALT[name], shape)
        if name == "dropout":
            out = delete_tokens(out, u, rate, width=X, fill_id=fill_id)
        elif name == "swap":
            out = swap_adjacent(out, u, rate)
        else:
            u_id = uniform(seed, step, _SALT["insert_id"], shape)
            out = insert_tokens(out, u, u_id, rate, ordinary_ids)
    return np.ascontiguousarray(out[:, :width])
