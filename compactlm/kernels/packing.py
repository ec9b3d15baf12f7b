"""Storage contracts of the packed weight formats (int4 / nf4 / fp4 / 2:4), bit-exact, pure jnp."""

import jax
import jax.numpy as jnp
import numpy as np

# ==================================================================================================
# 2:4 structured sparsity
# ==================================================================================================
# Contract (DESIGN §3), W[K, N] pruned along K: for every column n and every aligned group g of four
# rows (k = 4g … 4g+3) at most two entries are non-zero. Stored as
#   values[K/2, N]  dtype of W (bf16 / f16 / f32): row 2g holds W[4g + i0, n], row 2g+1 holds
#                   W[4g + i1, n]
#   meta[K/32, N]   int32: the nibble of group g is i0 | i1 << 2 with i0 < i1, in row g // 8 at bits
#                   4·(g % 8) — the same nibble order as the int4 qweight above.
# Groups with fewer than two non-zeros still store two distinct positions: the non-zero ones, padded
# with the lowest unused positions (so [0 0 0 0] → (0, 1) and [0 0 0 x] → (0, 3)), with zero values.
# The 2-bit indices are those of NVIDIA's sparse tensor cores / cuSPARSELt, but in our [K, N]
# orientation and nibble order rather than the hardware's interleaved layout; the Triton kernels
# expand the pattern themselves (see sparse24_matmul.py).
# int4+2:4: the values are quantized with the int4 scheme above along the compressed K/2 axis:
#   qvalues[K/16, N] int32 (int4 nibble layout over K/2 rows), scales / zeros[K/2/G, N].

SPARSE24_GROUP = 4  # rows per 2:4 group
SPARSE24_KEEP = 2  # non-zeros allowed per group
META24_GROUPS_PER_WORD = 8  # 4-bit nibbles per int32 metadata word → K must be a multiple of 32


def _check_24_shape(w_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(w_shape) != 2:
        raise ValueError(f"2:4 packing wants a [K, N] matrix, got shape {tuple(w_shape)}")
    K, N = w_shape
    if K % (SPARSE24_GROUP * META24_GROUPS_PER_WORD):
        raise ValueError(
            f"2:4 packing needs K % 32 == 0 (8 four-row groups per int32 metadata word), got K={K}"
        )
    return K, N


def mask_24_magnitude(w: jax.Array) -> jax.Array:
    """W with, in every aligned group of 4 along K, only its 2 largest-|w| entries kept.

    Ties go to the lower row, so the result is deterministic. A helper for tests and a baseline
    pruner (compress/prune.py has the real pruning algorithms).
    """
    K, N = _check_24_shape(w.shape)
    w_g = w.reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N)
    # argsort is stable, so equal magnitudes keep their row order and the lower row wins.
    rank = jnp.argsort(jnp.argsort(-jnp.abs(w_g).astype(jnp.float32), axis=1, stable=True), axis=1)
    return jnp.where(rank < SPARSE24_KEEP, w_g, jnp.zeros((), w.dtype)).reshape(K, N)


def find_24_violation(w) -> str | None:
    """None if W is 2:4 sparse along K, else a message naming the first offending group.

    Host-side (NumPy): it needs concrete values. "First" is the lowest group, then lowest column.
    """
    K, N = _check_24_shape(w.shape)
    nnz = (np.asarray(w).reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N) != 0).sum(axis=1)
    bad = np.argwhere(nnz > SPARSE24_KEEP)  # row-major: sorted by (group, column)
    if bad.size == 0:
        return None
    g, n = (int(i) for i in bad[0])
    return (
        f"matrix is not 2:4 sparse along K: group {g} (rows {4 * g}..{4 * g + 3}) of column {n} "
        f"has {int(nnz[g, n])} non-zeros (at most 2); {len(bad)} offending group(s) in all "
        "(prune first, e.g. with mask_24_magnitude)"
    )


def pack_meta_24(i0: jax.Array, i1: jax.Array) -> jax.Array:
    """Pack per-group positions i0 < i1 ([K/4, N], values 0..3) into meta[K/32, N] int32."""
    G, N = i0.shape
    nib = (i0.astype(jnp.uint32) | (i1.astype(jnp.uint32) << 2)).reshape(
        G // META24_GROUPS_PER_WORD, META24_GROUPS_PER_WORD, N
    )
    shifts = (4 * jnp.arange(META24_GROUPS_PER_WORD, dtype=jnp.uint32))[None, :, None]
    # The nibbles occupy disjoint bits, so the sum is a bitwise or; uint32 keeps bit 31 legal.
    word = jnp.sum(nib << shifts, axis=1, dtype=jnp.uint32)
    return jax.lax.bitcast_convert_type(word, jnp.int32)


def unpack_meta_24(meta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Inverse of pack_meta_24: meta[K/32, N] int32 → (i0, i1), each [K/4, N] int32."""
    W, N = meta.shape
    shifts = (4 * jnp.arange(META24_GROUPS_PER_WORD, dtype=jnp.int32))[None, :, None]
    # Arithmetic shift of a negative word drags sign bits in from the top; & 0xF drops them.
    nib = ((meta[:, None, :] >> shifts) & 0xF).reshape(W * META24_GROUPS_PER_WORD, N)
    return nib & 0x3, nib >> 2


def compress_24(w: jax.Array, *, check: bool = True) -> tuple[jax.Array, jax.Array]:
    """Dense 2:4-sparse W[K, N] → (values[K/2, N] in W's dtype, meta[K/32, N] int32).

    check=True (needs concrete W, so not under jit) refuses a W that is not 2:4 with an error naming
    the first offending group. check=False is traceable; it keeps, per group, the first two
    non-zeros in row order and silently drops the rest.
    """
    K, N = _check_24_shape(w.shape)
    if check and (msg := find_24_violation(w)) is not None:
        raise ValueError(msg)
    w_g = w.reshape(K // SPARSE24_GROUP, SPARSE24_GROUP, N)
    pos = jnp.arange(SPARSE24_GROUP, dtype=jnp.int32)[None, :, None]
    # Distinct scores: non-zeros first, then lower rows; the top two are the stored positions.
    score = (w_g != 0).astype(jnp.int32) * SPARSE24_GROUP + (SPARSE24_GROUP - 1 - pos)
    top = jnp.argsort(-score, axis=1)[:, :SPARSE24_KEEP, :].astype(jnp.int32)
    i0, i1 = jnp.min(top, axis=1), jnp.max(top, axis=1)
    v0 = jnp.take_along_axis(w_g, i0[:, None, :], axis=1)
    v1 = jnp.take_along_axis(w_g, i1[:, None, :], axis=1)
    values = jnp.concatenate([v0, v1], axis=1).reshape(K // 2, N)
    return values, pack_meta_24(i0, i1)


def decompress_24(values: jax.Array, meta: jax.Array) -> jax.Array:
    """(values[K/2, N], meta[K/32, N]) → dense W[K, N] in values' dtype; bit-exact inverse."""
    K2, N = values.shape
    K = 2 * K2
    _check_24_shape((K, N))
    if meta.shape != (K // 32, N):
        raise ValueError(f"meta shape {meta.shape} does not match values {values.shape}")
    i0, i1 = unpack_meta_24(meta)
    v_g = values.reshape(K // SPARSE24_GROUP, SPARSE24_KEEP, N)
    pos = jnp.arange(SPARSE24_GROUP, dtype=jnp.int32)[None, :, None]
    zero = jnp.zeros((), values.dtype)
    w_g = jnp.where(
        pos == i0[:, None, :], v_g[:, 0:1], jnp.where(pos == i1[:, None, :], v_g[:, 1:2], zero)
    )
    return w_g.reshape(K, N)


# The family names every format has (DESIGN §3): pack_<fmt> / unpack_<fmt>.
pack_24 = compress_24
unpack_24 = decompress_24
