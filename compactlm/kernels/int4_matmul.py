"""int4 / NF4 / FP4 weight-only matmul ``y = x @ W``: jnp reference (the spec), Triton, dispatch.

Data contract (docs/architecture.md §4, ``packing.py``): ``x[..., K]`` in bf16 / f16 / f32;
``qweight[K/8, N]`` int32 with the code of row k in bits ``4·(k % 8)``; ``scales[K/G, N]`` (absmax
for NF4 / FP4) and, for affine int4, ``zeros[K/G, N]``; ``y[..., N]`` in x's dtype. Every kernel
dequantizes to f32 exactly like ``packing.dequantize``, casts W to the activation dtype for the
tensor-core dot (the reference does the same) and accumulates in f32.

Kernels (raw ``@triton.jit`` in ``int4_kernels.py``, launched through ``_launch.triton_call`` on
CUDA or ``_interpret.interpret_call`` in tests; output pointers last):

- ``_int4_matmul_kernel``: tiled GEMM after Triton tutorial 03 (grouped pid ordering, masks on
  every edge); the packed ``[BK/8, BN]`` words are loaded once and unpacked in registers
  (broadcast over the 8 nibbles, shift, reshape; the idea of gemlite's bitpacking).
- ``_int4_gemv_kernel`` (``gemv_kernels.py``): decode for M ≤ 4 (``int4_configs.gemv_max_m``):
  no tl.dot, magic-number nibbles, NF4 / FP4 through a warp-shuffle register code book, up to 4
  rows of x per program (each W tile decoded once), N / K constexpr; W stays exact in f32 (not
  rounded to x's dtype, so bf16 results differ from the reference by at most that rounding).
  Its SASS instruction count per weight is the CPU proxy in ``compactlm/benchmarks/sass.py``.
- ``_int4_splitk_kernel``: decode path for 4 < M ≤ 16 — memory bound, so the grid is split along K
  (Marlin's split-K idea) to fill the SMs; each split writes an f32 partial ``[SPLIT_K, M, N]``
  and a second stage sums them (deterministic, no atomics, no zero-initialised output). Where a
  tile lies in one group (and for symmetric int4 / NF4 / FP4) the group scale multiplies the
  tile's dot, not every weight.
- ``_int4_matmul_bwd_kernel``: ``dx = dy @ W^T``, contracting over N with the same packed W.
- NF4 / FP4 codes index a 16-entry code book in-kernel (QLoRA; E2M1).

``int4_matmul`` is differentiable w.r.t. x (``jax.custom_vjp``, weight frozen as in QLoRA).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from compactlm.kernels import _launch, int4_configs
from compactlm.kernels._dispatch import Impl, check_impl, device_reason, resolve_impl
from compactlm.kernels.int4_kernels import (
    launch_int4_gemv,
    launch_int4_matmul,
    launch_int4_matmul_bwd,
)
from compactlm.kernels.packing import FORMATS, check_format, check_packed, dequantize

ACTIVATION_DTYPES = (jnp.bfloat16, jnp.float16, jnp.float32)
DECODE_MAX_M = 16


# ============================================================================ reference (the spec)


def reference_int4_matmul(
    x, qweight, scales, zeros=None, *, format: str = "int4", group_size: int | None = None
) -> jax.Array:
    """``x @ dequantize(W)``: W dequantized in f32, cast to x's dtype, dot with f32 accumulation."""
    w = dequantize(qweight, scales, zeros, format=format, group_size=group_size)
    y = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def reference_int4_matmul_bwd(
    dy, qweight, scales, zeros=None, *, format: str = "int4", group_size: int | None = None
) -> jax.Array:
    """``dx = dy @ dequantize(W)^T`` (contracts over N), f32 accumulation, in dy's dtype."""
    w = dequantize(qweight, scales, zeros, format=format, group_size=group_size)
    dx = jnp.dot(dy, w.astype(dy.dtype).T, preferred_element_type=jnp.float32)
    return dx.astype(dy.dtype)


# ============================================================================ launch configuration


def _config(m: int, n: int, k: int, format: str, *, backward: bool = False) -> dict:
    """Per-GPU data from int4_configs; decode (M <= 16) gets a SPLIT_K that fills the SMs."""
    kind = _launch.device_kind()
    cfg = int4_configs.get_config(kind, m, n, k, format, backward=backward)
    if not backward and m <= DECODE_MAX_M and "SPLIT_K" not in cfg and "BLOCK_SIZE_N" in cfg:
        cfg["SPLIT_K"] = int4_configs.split_k_for(
            kind, n, k, cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
        )
    return cfg


# ============================================================================ dispatch


def unsupported_reason(shape: tuple[int, int, int], dtype, format: str = "int4") -> str | None:
    """Why the Triton path cannot take ``(M, N, K)`` at this dtype/format, or None if it can."""
    m, n, k = shape
    if format not in FORMATS:
        return f"format {format!r} is not one of {FORMATS}"
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in ACTIVATION_DTYPES]:
        return f"activation dtype {jnp.dtype(dtype).name} is not bf16, f16 or f32"
    if k % 8:
        return f"K={k} is not a multiple of 8"
    if max(m * k, m * n, (k // 8) * n) >= 2**31:
        return f"(M, N, K)={shape} overflows the kernels' int32 offsets"
    return None


def supports(shape: tuple[int, int, int], dtype, format: str = "int4") -> bool:
    """Whether the Triton kernels handle ``x[M, K] @ W[K, N]`` (device aside)."""
    return unsupported_reason(shape, dtype, format) is None


def _forward(x2, qweight, scales, zeros, format, impl):
    if impl == "reference":
        return reference_int4_matmul(x2, qweight, scales, zeros, format=format)
    m, k = x2.shape
    cfg = _config(m, qweight.shape[1], k, format)
    if m <= int4_configs.gemv_max_m(format):
        return launch_int4_gemv(_launch.triton_call, x2, qweight, scales, zeros, format=format,
                                config=cfg)  # fmt: skip
    return launch_int4_matmul(_launch.triton_call, x2, qweight, scales, zeros, format=format,
                              config=cfg)  # fmt: skip


def _backward(dy2, qweight, scales, zeros, format, impl):
    if impl == "reference":
        return reference_int4_matmul_bwd(dy2, qweight, scales, zeros, format=format)
    m, n = dy2.shape
    cfg = _config(m, n, qweight.shape[0] * 8, format, backward=True)
    return launch_int4_matmul_bwd(_launch.triton_call, dy2, qweight, scales, zeros,
                                  format=format, config=cfg)  # fmt: skip


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _int4_matmul_vjp(x2, qweight, scales, zeros, format, impl):
    return _forward(x2, qweight, scales, zeros, format, impl)


def _vjp_fwd(x2, qweight, scales, zeros, format, impl):
    return _forward(x2, qweight, scales, zeros, format, impl), (qweight, scales, zeros)


def _vjp_bwd(format, impl, residuals, dy):
    qweight, scales, zeros = residuals
    dx = _backward(dy, qweight, scales, zeros, format, impl)
    # The weight is frozen (QLoRA): no gradient flows to the packed codes, scales or zeros.
    d_q = np.zeros(qweight.shape, dtype=jax.dtypes.float0)
    d_z = None if zeros is None else jnp.zeros_like(zeros)
    return dx, d_q, jnp.zeros_like(scales), d_z


_int4_matmul_vjp.defvjp(_vjp_fwd, _vjp_bwd)


def int4_matmul(
    x,
    qweight,
    scales,
    zeros=None,
    *,
    format: str = "int4",
    group_size: int | None = None,
    impl: Impl = "auto",
) -> jax.Array:
    """``x[..., K] @ W[K, N]`` with W stored 4-bit; differentiable w.r.t. x (W frozen).

    ``impl="auto"``: Triton on a CUDA device when ``supports`` holds, else the reference.
    ``impl="triton"`` raises ValueError naming the constraint when it cannot run.
    """
    check_format(format)
    check_impl(impl)
    if format != "int4" and zeros is not None:
        raise ValueError(f"format {format!r} has no zero point; pass zeros=None")
    check_packed(qweight, scales, zeros, group_size=group_size)
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features but the packed weight has K={k}")
    x2 = x.reshape(-1, k)
    reason = unsupported_reason((x2.shape[0], n, k), x.dtype, format) or device_reason(x.dtype)
    impl = resolve_impl(impl, "int4_matmul", reason)
    y = _int4_matmul_vjp(x2, qweight, scales, zeros, format, impl)
    return y.reshape(*x.shape[:-1], n)


__all__ = [
    "int4_matmul",
    "reference_int4_matmul",
    "reference_int4_matmul_bwd",
    "supports",
    "unsupported_reason",
]
