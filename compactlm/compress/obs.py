"""The Optimal Brain Surgeon sweep shared by GPTQ and SparseGPT: damped Hessian, Cholesky, blocks.

Orientation (DESIGN §3): W is ``[K, N]`` (Flax ``[in, out]``), the Hessian of the layer's squared
error ``‖X W − X Ŵ‖²`` is ``H = XᵀX`` over the K inputs. The sweep fixes one input row k at a
time (its N weights together) to a value chosen by a callback (rounded onto a grid: GPTQ;
zeroed where a mask says so: SparseGPT), and moves the rounding error onto the rows not yet
fixed with the OBS update, ``W[k+1:] −= H⁻¹[k+1:, k] · err_k / H⁻¹[k, k]``, recomputed for the
shrinking set of free rows. Frantar et al. (GPTQ, 2022, §4 steps 1–3) make that cheap:

- the successive inverses of the shrinking set are the rows of the upper Cholesky factor ``U`` of
  ``H⁻¹`` (``H⁻¹ = UᵀU``), so ``err_k = (w_k − q_k) / U[k, k]`` and the update is
  ``W[k:] −= U[k, k:]ᵀ · err_k``;
- the update is applied lazily: exactly within a block of ``block_size`` rows, and once per
  block (one GEMM) to the rows after it.

Each column n evolves independently given H, so a fused projection (q | k | v columns) gives the
same result as its parts compressed one by one with the shared Hessian.

Host NumPy in float64: K ≤ a few thousand at our sizes, and the updates are exact enough that
the blocked sweep and the one-row-at-a-time OBS recursion (the tests' reference) agree to
rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# GPTQ's default dampening: 1 % of the mean diagonal of H (the paper's λ, "percdamp").
DEFAULT_DAMP = 0.01
DEFAULT_BLOCK = 128


def prepare_hessian(
    w: np.ndarray, h: np.ndarray, *, damp: float = DEFAULT_DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """(W with dead inputs zeroed, damped H), both float64 copies.

    Dead inputs (H[k, k] = 0: that input was never non-zero on the calibration set) get
    H[k, k] = 1 and W[k] = 0, as in the GPTQ reference: nothing on the calibration data depends
    on them, and a zero row is exactly representable on every grid.
    """
    k = w.shape[0]
    if h.shape != (k, k):
        raise ValueError(f"Hessian shape {h.shape} does not match W's K={k}")
    if not damp > 0:
        raise ValueError(f"damp must be > 0 (fraction of mean diag H), got {damp}")
    w = np.array(w, np.float64)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[dead] = 0.0
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    return w, h


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper-triangular U with UᵀU = H⁻¹ (H symmetric positive definite)."""
    try:
        lower = np.linalg.cholesky(h)
    except np.linalg.LinAlgError as e:
        raise ValueError(
            f"Hessian is not positive definite even after damping ({e}); raise damp"
        ) from e
    eye = np.eye(h.shape[0])
    l_inv = np.linalg.solve(lower, eye)  # triangular, K ≤ a few thousand: solve is fine
    h_inv = l_inv.T @ l_inv
    return np.linalg.cholesky(h_inv).T


# Callbacks of the sweep. `begin(k0, w_blk, d_blk)`: called at each block start with the live
# block rows W[k0:k0+b] (already carrying all earlier updates) and d_blk = diag(U)[k0:k0+b].
# `fix(k, i, w_blk, d_blk) -> q_k`: the value row k (= k0 + i) is fixed to; w_blk[i:] is live.
BeginFn = Callable[[int, np.ndarray, np.ndarray], None]
FixFn = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]


def obs_sweep(
    w: np.ndarray,
    u: np.ndarray,
    fix: FixFn,
    *,
    begin: BeginFn | None = None,
    block_size: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """Fix the rows of W[K, N] in order with the blocked, lazy OBS update; returns Ŵ (float64).

    ``u`` is ``inverse_cholesky`` of the damped Hessian (in the sweep's row order).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    w = np.array(w, np.float64)
    k_total = w.shape[0]
    q = np.zeros_like(w)
    for k0 in range(0, k_total, block_size):
        k1 = min(k0 + block_size, k_total)
        w_blk = w[k0:k1].copy()
        u_blk = u[k0:k1, k0:k1]
        d_blk = np.diag(u_blk).copy()
        err_blk = np.zeros_like(w_blk)
        if begin is not None:
            begin(k0, w_blk, d_blk)
        for i in range(k1 - k0):
            q_i = np.asarray(fix(k0 + i, i, w_blk, d_blk), np.float64)
            err = (w_blk[i] - q_i) / d_blk[i]
            # Exact within the block: rows i.. of the block see this row's error now.
            w_blk[i:] -= np.outer(u_blk[i, i:], err)
            q[k0 + i] = q_i
            err_blk[i] = err
        # Lazy: the rows after the block get the whole block's errors in one GEMM.
        w[k1:] -= u[k0:k1, k1:].T @ err_blk
    return q
