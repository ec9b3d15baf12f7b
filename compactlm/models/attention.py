"""Causal GQA attention for XLA:CPU that never stores the T×S probabilities (flash-style backward).

Contract: q [B, T, N, H], k and v [B, T, K, H] with K | N (query head n reads kv head n // (N/K),
as `jax.nn.dot_product_attention`), any float dtype; logits, softmax and the backward's
probabilities are f32; returns [B, T, N, H] in q's dtype. Key position s is visible from query
position t iff s <= t (and t - s < window in a sliding window: `key_visible`, the one
definition the KV cache's masks use too).

Design (FlashAttention, Dao et al. 2022, §3.1 and appendix B, without the on-chip tiling that a
CPU does not need at these sizes):
- Query blocks of `block_size` positions; block i attends to keys [0, (i+1)·block_size) only, so
  the fully masked upper-triangle blocks are never computed (≈ half the QKᵀ / PV FLOPs, softmax
  and mask work at T = 4·block_size already skip 3/8).
- The forward saves q, k, v, the output and the per-row logsumexp (B·K·T·G floats); the backward
  recomputes P = exp(QKᵀ − lse) block by block and uses D = rowsum(dO ∘ O) for dS = P ∘ (dP − D).
  XLA's autodiff of the softmax instead keeps every f32 [B, K, G, T, S] P (8.4 MB per layer at
  `tiny`) and materialises transposed copies of it for dV = Pᵀ·dO and dK = dSᵀ·Q.
- The G query heads of one kv head are folded into the row axis ([B, K, T·G, H], row m = t·G + g)
  so every matmul is a plain batched GEMM over (B, K) with no repeat of k/v.
Measured on a 2-core Zen 4 (docs/benchmarks.md): the `tiny` train step is 1.2× faster than
with `dot_product_attention(implementation="xla")` (paired medians 1.22-1.24, loaded machine).
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

# 64 query positions per block: with T = 256 it skips 3/8 of the T×S work, and each block's GEMMs
# stay big enough (64·G rows) for the dot library; 32 measured the same, 128 slower (skips less).
DEFAULT_BLOCK_SIZE = 64


def _blocks(T: int, block_size: int) -> list[tuple[int, int]]:
    """[t0, t1) query ranges; the last may be short (ragged T)."""
    return [(t0, min(t0 + block_size, T)) for t0 in range(0, T, block_size)]


def key_visible(t, s, window=None) -> jax.Array:
    """THE definition of which keys a query sees (broadcasting t, s: positions): s <= t, and
    within a sliding window of w > 0 keys also t - s < w (transformers' sliding_window: w keys,
    the query's own included). window None or <= 0: causal only; it may be traced (a scanned
    layer's flag picks it)."""
    vis = s <= t
    if window is None:
        return vis
    return vis & ((window <= 0) | (t - s < window))


def causal_window_mask(T: int, window) -> jax.Array:
    """[T, T] bool mask of key_visible over positions 0..T-1 (XLA's attention takes it)."""
    pos = jnp.arange(T)
    return key_visible(pos[:, None], pos[None, :], window)


def _visible(t0: int, t1: int, G: int, S: int, window) -> jax.Array:
    """[(t1 - t0)·G, S] bool: row m = (t - t0)·G + g may see key s (key_visible)."""
    t_M = t0 + jnp.arange((t1 - t0) * G) // G
    return key_visible(t_M[:, None], jnp.arange(S)[None, :], window)


def _forward(q_BKMH, k_BKSH, v_BKSH, window, block_size):
    G = q_BKMH.shape[2] // k_BKSH.shape[2]
    outs, lses = [], []
    for t0, t1 in _blocks(k_BKSH.shape[2], block_size):
        q = q_BKMH[:, :, t0 * G : t1 * G]
        s_BKMS = jnp.einsum(
            "bkmh,bksh->bkms", q, k_BKSH[:, :, :t1], preferred_element_type=jnp.float32
        )
        s_BKMS = jnp.where(_visible(t0, t1, G, t1, window), s_BKMS, -jnp.inf)
        m_BKM1 = jnp.max(s_BKMS, axis=-1, keepdims=True)  # the diagonal is always visible: finite
        e_BKMS = jnp.exp(s_BKMS - m_BKM1)
        l_BKM1 = jnp.sum(e_BKMS, axis=-1, keepdims=True)
        p_BKMS = (e_BKMS / l_BKM1).astype(v_BKSH.dtype)
        o = jnp.einsum(
            "bkms,bksh->bkmh", p_BKMS, v_BKSH[:, :, :t1], preferred_element_type=jnp.float32
        )
        outs.append(o.astype(q_BKMH.dtype))
        lses.append((m_BKM1 + jnp.log(l_BKM1))[..., 0])
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q_BKMH, k_BKSH, v_BKSH, window, block_size):
    return _forward(q_BKMH, k_BKSH, v_BKSH, window, block_size)[0]


def _attend_fwd(q_BKMH, k_BKSH, v_BKSH, window, block_size):
    o_BKMH, lse_BKM = _forward(q_BKMH, k_BKSH, v_BKSH, window, block_size)
    return o_BKMH, (q_BKMH, k_BKSH, v_BKSH, window, o_BKMH, lse_BKM)


def _attend_bwd(block_size, res, do_BKMH):
    q_BKMH, k_BKSH, v_BKSH, window, o_BKMH, lse_BKM = res
    G = q_BKMH.shape[2] // k_BKSH.shape[2]
    f32 = jnp.float32
    d_BKM = jnp.sum(do_BKMH.astype(f32) * o_BKMH.astype(f32), axis=-1)  # rowsum(dO ∘ O)
    dk_BKSH = jnp.zeros(k_BKSH.shape, f32)
    dv_BKSH = jnp.zeros(v_BKSH.shape, f32)
    dqs = []
    for t0, t1 in _blocks(k_BKSH.shape[2], block_size):
        rows = slice(t0 * G, t1 * G)
        q, do = q_BKMH[:, :, rows], do_BKMH[:, :, rows]
        k, v = k_BKSH[:, :, :t1], v_BKSH[:, :, :t1]
        s_BKMS = jnp.einsum("bkmh,bksh->bkms", q, k, preferred_element_type=f32)
        p_BKMS = jnp.where(
            _visible(t0, t1, G, t1, window), jnp.exp(s_BKMS - lse_BKM[:, :, rows, None]), 0.0
        )
        dv = jnp.einsum("bkms,bkmh->bksh", p_BKMS.astype(do.dtype), do, preferred_element_type=f32)
        dv_BKSH = dv_BKSH.at[:, :, :t1].add(dv)
        dp_BKMS = jnp.einsum("bkmh,bksh->bkms", do, v, preferred_element_type=f32)
        ds_BKMS = (p_BKMS * (dp_BKMS - d_BKM[:, :, rows, None])).astype(q.dtype)
        dqs.append(jnp.einsum("bkms,bksh->bkmh", ds_BKMS, k, preferred_element_type=f32))
        dk = jnp.einsum("bkms,bkmh->bksh", ds_BKMS, q, preferred_element_type=f32)
        dk_BKSH = dk_BKSH.at[:, :, :t1].add(dk)
    dq_BKMH = jnp.concatenate(dqs, axis=2)
    dq, dk, dv = (
        g.astype(x.dtype) for g, x in ((dq_BKMH, q_BKMH), (dk_BKSH, k_BKSH), (dv_BKSH, v_BKSH))
    )
    return dq, dk, dv, None  # the window (an integer) has no cotangent


_attend.defvjp(_attend_fwd, _attend_bwd)


def blocked_causal_attention(
    q_BTNH: Float[Array, "B T N H"],
    k_BTKH: Float[Array, "B T K H"],
    v_BTKH: Float[Array, "B T K H"],
    *,
    scale: float | None = None,
    window: Int[ArrayLike, ""] | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> Float[Array, "B T N H"]:
    """softmax(scale·q·kᵀ, causal)·v with GQA (scale None: 1/√H); window: a sliding window of
    that many keys (key_visible; None or <= 0: none). See the module docstring for the
    contract."""
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    G = N // K
    # Scale q once (T·N·H multiplies) rather than the logits (T·S·N).
    scale = H**-0.5 if scale is None else scale
    q = (q_BTNH * jnp.asarray(scale, q_BTNH.dtype)).reshape(B, T, K, G, H)
    q_BKMH = q.transpose(0, 2, 1, 3, 4).reshape(B, K, T * G, H)
    k_BKSH, v_BKSH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    o_BKMH = _attend(q_BKMH, k_BKSH, v_BKSH, window, block_size)
    return o_BKMH.reshape(B, K, T, G, H).transpose(0, 2, 1, 3, 4).reshape(B, T, N, H)
