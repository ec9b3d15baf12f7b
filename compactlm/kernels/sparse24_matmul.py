"""2:4 structured-sparse matmul y = x @ W, W stored as 2:4 values + metadata (bf16 or int4 values).

Data contract (GEMM letters, docs/architecture.md §4; byte layout in packing.py's "2:4 structured
sparsity"):
  x[..., K]        bf16 / f16 / f32; leading dims are flattened into M.
  values[K/2, N]   bf16 / f16 / f32, the two kept entries of every aligned group of 4 rows, or, for
                   int4+2:4, qvalues[K/16, N] int32 (int4 nibbles along the compressed axis) with
                   scales[K/2/G, N] and optional zeros[K/2/G, N] (G counts compressed rows).
  meta[K/32, N]    int32, nibble i0 | i1 << 2 (i0 < i1) of group g in row g // 8, bits 4·(g % 8).
  y[..., N]        x's dtype unless out_dtype says otherwise.
Numerics (what the references specify and every kernel reproduces): W is materialized in x's dtype
(int4 values are dequantized in fp32 first, w = (q − z)·s), then contracted with fp32 accumulation.

Where the design comes from: the 2:4 pattern and its 2-bit position metadata are those of NVIDIA's
sparse tensor cores and cuSPARSELt ("Accelerating Sparse Deep Neural Networks", Mishra et al. 2021);
the tiled GEMM (grouped pid ordering, masked K loop) is Triton's tutorial 03-matrix-multiplication.

Kernel choice: the kernels load the K/2 values and the metadata and EXPAND them into a dense
[BLOCK_SIZE_K, BLOCK_SIZE_N] tile in registers, then call tl.dot. The alternative, loading K/2
values and gathering the matching x elements, makes the x index depend on n, so the product is a
[M, K/2, N] gather-multiply with no MMA shape: it loses the tensor cores for every M > 1. Triton
3.6 exposes no sparse MMA (mma.sp), so the expansion does the multiply on the zeros too — 2× the
tensor-core work of the sparse hardware — but it moves only the compressed bytes (values + meta
are 56% of dense bf16, int4+2:4 19.5%), which is what decode (M ≤ 16, memory bound) pays for. A
compute-bound prefill/training GEMM runs at dense speed; beating it needs cuSPARSELt.

Kernels (raw @triton.jit in sparse24_kernels.py, small explicit blocks in tests; launch configs are
data, int4_configs):
  _sparse24_matmul_kernel      tiled GEMM, any M (masks on every edge).
  _sparse24_gemv_kernel        M ≤ 4 (gemv_kernels.py, int4_configs.gemv_max_m): no dense tile,
                               no tl.dot: the kept values
                               multiply x[4g + i0], x[4g + i1] directly; split-K partials.
  _sparse24_decode_kernel      4 < M ≤ 16: grid (N tiles, SPLIT_K), fp32 partials summed by XLA
                               (deterministic, no atomics); tl.dot on a 16-row tile.
  _sparse24_matmul_bwd_kernel  dx = dy @ Wᵀ over the same compressed W (the expanded tile is
                               transposed into tl.dot), for the custom_vjp backward.
Each takes INT4 as a constexpr and shares _load_w_tile, so one kernel serves both value formats
(the bf16 variant passes meta as a never-read stand-in for scales / zeros).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from compactlm.kernels import _launch, int4_configs, packing
from compactlm.kernels._dispatch import Impl, check_impl, device_reason, resolve_impl
from compactlm.kernels.sparse24_kernels import launch_sparse24_matmul, launch_sparse24_matmul_bwd

FORMATS = ("sparse24", "sparse24_int4")
FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


# ==================================================================================================
# References (the specification)
# ==================================================================================================


def reference_sparse24_matmul(x, values, meta, *, out_dtype=None) -> jax.Array:
    """y = x @ decompress_24(values, meta), W in x's dtype, fp32 accumulation."""
    w = packing.decompress_24(values, meta).astype(x.dtype)
    y = jnp.dot(x, w, preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def reference_sparse24_int4_matmul(
    x, qvalues, meta, scales, zeros=None, *, group_size: int | None = None, out_dtype=None
) -> jax.Array:
    """y = x @ W, W = decompress_24(dequantize_int4(qvalues, scales, zeros)) (f32) in x's dtype."""
    w = packing.dequantize_sparse24_int4(qvalues, meta, scales, zeros, group_size=group_size)
    y = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(out_dtype or x.dtype)


def _reference_dense_w(values, meta, scales, zeros, dtype) -> jax.Array:
    if scales is None:
        return packing.decompress_24(values, meta).astype(dtype)
    return packing.dequantize_sparse24_int4(values, meta, scales, zeros).astype(dtype)


def _reference_backward(dy, values, meta, scales, zeros, x_dtype) -> jax.Array:
    """dx = dy @ Wᵀ with the forward's W (x's dtype) and fp32 accumulation."""
    w = _reference_dense_w(values, meta, scales, zeros, x_dtype)
    return jnp.dot(dy.astype(x_dtype), w.T, preferred_element_type=jnp.float32).astype(x_dtype)


# ==================================================================================================
# supports() and dispatch
# ==================================================================================================


def _check_operands(x, values, meta, scales, zeros, group_size) -> tuple[int, int]:
    """Shape / dtype agreement (both impls); returns (K, N)."""
    if meta.ndim != 2 or meta.dtype != jnp.int32:
        raise ValueError(f"meta must be [K/32, N] int32, got {meta.shape} {meta.dtype}")
    K, N = meta.shape[0] * 32, meta.shape[1]
    if scales is None:
        if jnp.dtype(values.dtype) not in FLOAT_DTYPES:
            raise ValueError(f"values must be bf16, f16 or f32, got {values.dtype}")
        want = (K // 2, N)
    else:
        if values.dtype != jnp.int32:
            raise ValueError(f"qvalues must be int32 (8 int4 codes per word), got {values.dtype}")
        want = (K // 16, N)
        packing.check_packed(values, scales, zeros, group_size=group_size)
    if tuple(values.shape) != want:
        raise ValueError(f"values shape {tuple(values.shape)} does not fit meta {meta.shape}: "
                         f"K={K}, N={N} needs {want}")  # fmt: skip
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} features but the 2:4 weight has K={K}")
    return K, N


def unsupported_reason(shape: tuple[int, int, int], dtype, format: str = "sparse24") -> str | None:
    """Why the Triton kernels cannot take x[M, K] @ W[K, N] (device aside), or None if they can."""
    M, N, K = shape
    if format not in FORMATS:
        return f"format {format!r} is not one of {FORMATS}"
    if jnp.dtype(dtype) not in FLOAT_DTYPES:
        return f"activation dtype {jnp.dtype(dtype).name} is not bf16, f16 or f32"
    if K % 32:
        return f"K={K} is not a multiple of 32 (one int32 of 2:4 metadata covers 32 rows)"
    # Offsets are int32 in the kernels (jax-triton passes sizes as i32).
    if max(M * K, M * N, K * N // 2) >= 2**31:
        return f"(M, N, K)={shape} overflows the kernels' int32 offsets"
    return None


def supports(shape: tuple[int, int, int], dtype, format: str = "sparse24") -> bool:
    """Whether the Triton kernels handle x[M, K] @ W[K, N] in this format (device aside)."""
    return unsupported_reason(shape, dtype, format) is None


def _format(scales) -> str:
    return "sparse24" if scales is None else "sparse24_int4"


def _config(M: int, N: int, K: int, fmt: str, *, backward: bool = False) -> dict[str, Any]:
    """Launch config from the per-GPU tables in int4_configs (data; nothing is tuned here)."""
    return int4_configs.get_config(_launch.device_kind(), M, N, K, fmt, backward=backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype):
    if impl == "reference":
        w = _reference_dense_w(values, meta, scales, zeros, x_dtype)
        return jnp.dot(x2, w, preferred_element_type=jnp.float32).astype(out_dtype)
    M, N, K = x2.shape[0], meta.shape[1], meta.shape[0] * 32
    cfg = _config(M, N, K, _format(scales))
    return launch_sparse24_matmul(_launch.triton_call, x2, values, meta, scales, zeros,
                                  out_dtype=out_dtype, config=cfg)  # fmt: skip


def _sparse24_core_fwd(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype):
    y = _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, x_dtype)
    return y, (values, meta, scales, zeros)


def _sparse24_core_bwd(impl, out_dtype, x_dtype, residuals, dy):
    values, meta, scales, zeros = residuals
    if impl == "reference":
        dx = _reference_backward(dy, values, meta, scales, zeros, x_dtype)
    else:
        (M, N), K = dy.shape, meta.shape[0] * 32
        cfg = _config(M, N, K, _format(scales), backward=True)
        dx = launch_sparse24_matmul_bwd(_launch.triton_call, dy.astype(x_dtype), values, meta,
                                        scales, zeros, config=cfg)  # fmt: skip

    def frozen(a):  # weights are frozen: zero cotangents (float0 for the integer arrays)
        if a is None:
            return None
        if jnp.issubdtype(a.dtype, jnp.integer):
            return np.zeros(a.shape, dtype=jax.dtypes.float0)
        return jnp.zeros_like(a)

    return (dx, *(frozen(a) for a in (values, meta, scales, zeros)))


_sparse24_core.defvjp(_sparse24_core_fwd, _sparse24_core_bwd)


def _dispatch(x, values, meta, scales, zeros, group_size, impl, out_dtype):
    check_impl(impl)
    K, N = _check_operands(x, values, meta, scales, zeros, group_size)
    x2 = x.reshape(-1, K)
    op = "sparse24_matmul" if scales is None else "sparse24_int4_matmul"
    reason = unsupported_reason((x2.shape[0], N, K), x.dtype, _format(scales))
    impl = resolve_impl(impl, op, reason or device_reason(x.dtype))
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    y2 = _sparse24_core(x2, values, meta, scales, zeros, impl, out_dtype, jnp.dtype(x.dtype))
    return y2.reshape(*x.shape[:-1], y2.shape[-1])


def sparse24_matmul(x, values, meta, *, impl: Impl = "auto", out_dtype=None) -> jax.Array:
    """y = x @ W for a 2:4-compressed W (values[K/2, N] + meta[K/32, N]).

    impl="auto": the Triton kernels on a CUDA device when supports() holds, else the reference;
    "triton" raises if they cannot run, naming the constraint. Differentiable w.r.t. x (dx = dy @
    Wᵀ over the same compressed W); the weights are frozen: their cotangents are zero.
    """
    return _dispatch(x, values, meta, None, None, None, impl, out_dtype)


def sparse24_int4_matmul(
    x,
    qvalues,
    meta,
    scales,
    zeros=None,
    *,
    group_size: int | None = None,
    impl: Impl = "auto",
    out_dtype=None,
) -> jax.Array:
    """y = x @ W for the int4+2:4 format (see sparse24_matmul; group_size is checked if given)."""
    return _dispatch(x, qvalues, meta, scales, zeros, group_size, impl, out_dtype)
