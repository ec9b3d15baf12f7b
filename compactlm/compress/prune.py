"""Pruning one W[K, N]: magnitude, Wanda and SparseGPT, unstructured or N:M along K.

Patterns: ``unstructured`` at a sparsity s ∈ (0, 1), or ``N:M`` (2:4, 4:8): in every aligned group
of M consecutive rows k of a column n, at most N weights are kept (sparsity 1 − N/M). N:M runs
along K, the contracted axis, as the 2:4 kernels require (``kernels/packing.py``); only 2:4 has
packed storage, 4:8 stays dense with zeros.

- magnitude: keep the largest |W|; unstructured compares the whole matrix (the usual baseline).
- Wanda (Sun et al. 2024): score ``|W[k, n]| · ‖X[:, k]‖₂``, compared per output n (each column
  keeps its top (1 − s)·K; the paper's §3 "per output" comparison group).
- SparseGPT (Frantar & Alistarh 2023): the OBS sweep of ``obs.py`` with zeroing as the rounding
  rule; the mask is chosen in blocks of 128 rows by ``w² / U[k, k]²`` (the OBS saliency with the
  block's current weights), N:M every M rows, and the error of each zeroed weight moves onto the
  rows not yet visited. Unstructured selection is per block over all columns (the reference's).

All return a boolean ``keep`` mask [K, N]; SparseGPT also returns the updated weights.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from compactlm.compress import obs

PRUNE_METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
PATTERNS: tuple[str, ...] = ("unstructured", "2:4", "4:8")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """What `compactlm prune` runs on every linear of the model."""

    # Pruning criterion: "magnitude" |W|; "wanda" |W|·‖X‖₂ per output; "sparsegpt" OBS with
    # error compensation (wanda and sparsegpt need calibration).
    method: Literal["magnitude", "wanda", "sparsegpt"] = "wanda"
    # "unstructured" at `sparsity`, or N:M along K (2:4 has kernels; 4:8 stays dense).
    pattern: Literal["unstructured", "2:4", "4:8"] = "2:4"
    # Fraction of weights set to zero for "unstructured" (N:M fixes it at 1 − N/M: another
    # value with an N:M pattern is an error, not ignored). 0.5: the operating point of the
    # SparseGPT and Wanda papers' main tables, and what 2:4 and 4:8 give.
    sparsity: float = 0.5
    # SparseGPT: dampening as a fraction of mean diag H (the paper's 1 %).
    damp: float = obs.DEFAULT_DAMP
    # SparseGPT: rows per mask-selection block (the paper's adaptive mask selection, B = 128).
    block_size: int = obs.DEFAULT_BLOCK

    def __post_init__(self) -> None:
        check_prune_args(self.method, self.pattern, self.sparsity)
        if not self.damp > 0:
            raise ValueError(f"prune damp must be > 0, got {self.damp}")

    def check_combined(self) -> None:
        """sparsity against pattern, once every override is applied (compactlm/config.py):
        `sparsity=0.7 pattern=unstructured` passes through (2:4, 0.7) on the way."""
        nm = parse_pattern(self.pattern)
        if nm is not None and self.sparsity != 1.0 - nm[0] / nm[1]:
            raise ValueError(
                f"sparsity={self.sparsity} does nothing with pattern={self.pattern}, which keeps "
                f"{nm[0]} of every {nm[1]} weights (sparsity {1.0 - nm[0] / nm[1]}); valid: "
                f"pattern=unstructured sparsity={self.sparsity}, or pattern={self.pattern} "
                f"without sparsity"
            )

    @property
    def effective_sparsity(self) -> float:
        nm = parse_pattern(self.pattern)
        return self.sparsity if nm is None else 1.0 - nm[0] / nm[1]


def check_prune_args(method: str, pattern: str, sparsity: float) -> None:
    if method not in PRUNE_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(PRUNE_METHODS)}")
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; valid patterns: {', '.join(PATTERNS)}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in (0, 1)")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """ "N:M" → (N kept, M); "unstructured" → None."""
    if pattern == "unstructured":
        return None
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; valid patterns: {', '.join(PATTERNS)}")
    n, m = (int(p) for p in pattern.split(":"))
    return n, m


def check_shape(shape: tuple[int, int], pattern: str) -> None:
    """N:M needs M | K; the 2:4 storage additionally K % 32 (packing's metadata words)."""
    nm = parse_pattern(pattern)
    if nm is not None and shape[0] % nm[1]:
        raise ValueError(f"pattern {pattern} needs K % {nm[1]} == 0; this layer has K={shape[0]}")


# ----------------------------------------------------------------------------- masks from scores


def nm_mask(score, n: int, m: int) -> np.ndarray:
    """Keep the n highest scores of every aligned group of m rows, per column; ties → lower row."""
    score = np.asarray(score)
    k, cols = score.shape
    if k % m:
        raise ValueError(f"N:M = {n}:{m} needs K % {m} == 0, got K={k}")
    s = score.reshape(k // m, m, cols)
    order = np.argsort(-s, axis=1, kind="stable")
    rank = np.argsort(order, axis=1, kind="stable")
    return (rank < n).reshape(k, cols)


def topk_mask(score, sparsity: float, *, per_output: bool) -> np.ndarray:
    """Keep the round((1 − sparsity)·count) highest scores, per column or over the matrix."""
    score = np.asarray(score)
    k, cols = score.shape
    if per_output:
        n_keep = int(round((1.0 - sparsity) * k))
        order = np.argsort(-score, axis=0, kind="stable")
        keep = np.zeros((k, cols), bool)
        np.put_along_axis(keep, order[:n_keep], True, axis=0)
        return keep
    n_keep = int(round((1.0 - sparsity) * score.size))
    order = np.argsort(-score.reshape(-1), kind="stable")
    keep = np.zeros(score.size, bool)
    keep[order[:n_keep]] = True
    return keep.reshape(k, cols)


def mask_from_score(score, pattern: str, sparsity: float, *, per_output: bool) -> np.ndarray:
    check_shape(np.shape(score), pattern)
    nm = parse_pattern(pattern)
    if nm is not None:
        return nm_mask(score, *nm)
    return topk_mask(score, sparsity, per_output=per_output)


def satisfies_pattern(keep, pattern: str) -> bool:
    """True if at most N of every aligned M rows per column are kept (always for unstructured)."""
    nm = parse_pattern(pattern)
    if nm is None:
        return True
    keep = np.asarray(keep)
    k, cols = keep.shape
    return bool((keep.reshape(k // nm[1], nm[1], cols).sum(axis=1) <= nm[0]).all())


# ----------------------------------------------------------------------------- criteria


def magnitude(w, pattern: str = "2:4", sparsity: float = 0.5) -> np.ndarray:
    """Keep mask by |W| (unstructured: over the whole matrix)."""
    return mask_from_score(np.abs(np.asarray(w, np.float32)), pattern, sparsity, per_output=False)


def wanda(w, x_norm, pattern: str = "2:4", sparsity: float = 0.5) -> np.ndarray:
    """Keep mask by |W[k, n]| · ‖X[:, k]‖₂, compared per output column n."""
    w = np.abs(np.asarray(w, np.float32))
    x_norm = np.asarray(x_norm, np.float32)
    if x_norm.shape != (w.shape[0],):
        raise ValueError(f"x_norm shape {x_norm.shape} does not match W's K={w.shape[0]}")
    return mask_from_score(w * x_norm[:, None], pattern, sparsity, per_output=True)


def sparsegpt(
    w,
    h,
    pattern: str = "2:4",
    sparsity: float = 0.5,
    *,
    damp: float = obs.DEFAULT_DAMP,
    block_size: int = obs.DEFAULT_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT of W[K, N] with H = XᵀX: (updated, pruned W float32, keep mask)."""
    w0 = np.asarray(w, np.float32)
    k, cols = w0.shape
    check_shape((k, cols), pattern)
    nm = parse_pattern(pattern)
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"SparseGPT block_size={block_size} must be a multiple of M={nm[1]}")
    wd, hd = obs.prepare_hessian(w0, h, damp=damp)
    u = obs.inverse_cholesky(hd)
    keep = np.ones((k, cols), bool)

    def begin(k0: int, w_blk: np.ndarray, d_blk: np.ndarray) -> None:
        if nm is None:
            score = w_blk**2 / d_blk[:, None] ** 2
            keep[k0 : k0 + len(w_blk)] = topk_mask(score, sparsity, per_output=False)

    def fix(kk: int, i: int, w_blk: np.ndarray, d_blk: np.ndarray) -> np.ndarray:
        if nm is not None and i % nm[1] == 0:
            m = nm[1]
            score = w_blk[i : i + m] ** 2 / d_blk[i : i + m, None] ** 2
            keep[kk : kk + m] = nm_mask(score, nm[0], m)
        return np.where(keep[kk], w_blk[i], 0.0)

    w_hat = obs.obs_sweep(wd, u, fix, begin=begin, block_size=block_size)
    return w_hat.astype(np.float32), keep
