"""Dispatch rules shared by the kernel ops: which ``impl`` runs, and why Triton can't.

Every op takes ``impl="auto" | "triton" | "reference"`` (docs/architecture.md §4): ``auto`` picks
Triton on a CUDA device when the op's ``supports()`` holds and jax-triton imports, else the
reference; an explicit ``impl="triton"`` that cannot run raises ``ValueError("<op>(impl='triton')
cannot run: <constraint>")``. The op supplies its own shape / format reason; the device part lives
here.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from compactlm.kernels import _launch

Impl = Literal["auto", "triton", "reference"]
IMPLS: tuple[str, ...] = ("auto", "triton", "reference")


def check_impl(impl: str) -> None:
    """Reject an ``impl`` that is not one of ``IMPLS`` (before any shape work)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")


def device_reason(dtype) -> str | None:
    """Why this process cannot launch the Triton kernels at this activation dtype, or None."""
    if not _launch.on_cuda() and _launch.aot_target() is None:
        return f"needs a CUDA device, JAX's default backend is {jax.default_backend()!r}"
    cc = _launch.compute_capability()
    if cc is not None and cc < (8, 0) and jnp.dtype(dtype) == jnp.bfloat16:
        return f"bf16 tensor-core dots need compute capability >= 8.0, found {cc}"
    try:
        _launch._jax_triton()
    except ImportError as e:
        return str(e)
    return None


def resolve_impl(impl: str, op: str, reason: str | None) -> str:
    """``"triton"`` or ``"reference"``; ``reason`` is the op's and the device's, None if it can run.

    ``reason`` covers both the op's ``unsupported_reason`` and ``device_reason``, e.g.
    ``resolve_impl(impl, "int4_matmul", unsupported_reason(...) or device_reason(dtype))``.
    """
    check_impl(impl)
    if impl == "reference":
        return "reference"
    if impl == "triton" and reason is not None:
        raise ValueError(f"{op}(impl='triton') cannot run: {reason}")
    return "triton" if reason is None else "reference"
