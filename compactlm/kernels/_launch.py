"""The one place that imports jax_triton (lazily), plus "are we on a CUDA device" helpers.

Why lazy (docs/architecture.md §3): ``import jax_triton`` raises on a CPU-only jaxlib 0.3.x and,
under triton < 3.7, jax-triton 0.4.x silently stubs out its CUDA backend unless
``triton.backends.nvidia.driver.TMA_TF32`` exists; ``_jax_triton()`` sets it (to 11, the value
later Triton releases define) before the first import. Nothing here runs at import time.

Calling convention (jax-triton's, which ``_interpret.interpret_call`` mirrors): positional args
bind to kernel parameters in order, Python scalars are baked in as specialisation constants,
and one output buffer per ``out_shape`` leaf binds to the kernel's remaining pointer parameters,
so kernels declare their output pointers LAST.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import jax


@functools.cache
def _jax_triton():
    """Import jax_triton with the triton 3.6 shim; raise a clear ImportError if it is missing."""
    try:
        import triton.backends.nvidia.driver as nvidia_driver

        if not hasattr(nvidia_driver, "TMA_TF32"):
            nvidia_driver.TMA_TF32 = 11
    except ImportError:  # a Triton build without the NVIDIA backend: jax_triton stubs it anyway
        pass
    try:
        import jax_triton
    except ImportError as e:
        raise ImportError(
            "the Triton path needs jax-triton: install the `gpu` extra or "
            "`pip install --no-deps jax-triton==0.4.1` (scripts/bootstrap.sh does this)"
        ) from e
    return jax_triton


_TARGET: dict[str, int] = {}
_TARGET_KIND: list[str] = []  # the device kind named by an enclosing ``target(..., kind=)``


@contextlib.contextmanager
def target(compute_capability: int, kind: str | None = None) -> Iterator[None]:
    """Compile Triton calls for this compute capability (e.g. 90) instead of asking the device.

    For ahead-of-time ``jax.export(..., platforms=["cuda"])`` on a machine without a GPU (the
    export tests, ``compactlm.benchmarks.sass``). ``kind`` (e.g. ``"h200"``) makes ``device_kind()``
    answer it, so the launch configs are that GPU's rows; inside the block the dispatch treats
    the process as a CUDA one (``aot_target()``), which is what lowering for "cuda" needs.
    """
    previous, previous_kind = dict(_TARGET), list(_TARGET_KIND)
    _TARGET["compute_capability"] = compute_capability
    _TARGET_KIND[:] = [kind] if kind else []
    try:
        yield
    finally:
        _TARGET.clear()
        _TARGET.update(previous)
        _TARGET_KIND[:] = previous_kind


def aot_target() -> int | None:
    """The compute capability an enclosing ``target()`` compiles for, or None."""
    return _TARGET.get("compute_capability")


def triton_call(kernel: Any, grid: Any, *args: Any, out_shape: Any, **meta: Any) -> Any:
    """``jax_triton.triton_call`` with ``interpret_call``'s argument order (kernel, grid first).

    ``out_shape`` takes ``jax.ShapeDtypeStruct``s (or ``(shape, dtype)`` pairs); launch options
    ``num_warps`` / ``num_stages`` / ``num_ctas`` pass through, other keywords are constexprs.
    """
    jt = _jax_triton()
    specs = out_shape if isinstance(out_shape, list) else [out_shape]
    specs = [
        s if hasattr(s, "shape") and hasattr(s, "dtype") else jax.ShapeDtypeStruct(*s)
        for s in specs
    ]
    out = jt.triton_call(
        *args,
        kernel=kernel,
        out_type=specs if isinstance(out_shape, list) else specs[0],
        grid=grid,
        **{**_TARGET, **meta},
    )
    return out


@functools.cache
def on_cuda() -> bool:
    """True when JAX's default backend is an NVIDIA GPU (not ROCm, not CPU/TPU)."""
    try:
        dev = jax.devices()[0]
    except RuntimeError:
        return False
    if dev.platform not in ("gpu", "cuda"):
        return False
    version = getattr(dev.client, "platform_version", "") or ""
    return "rocm" not in version.lower()


def device_kind() -> str:
    """Short name of the first device for per-GPU tables: 'h100', 'h200', 'a100', ... or 'cpu'."""
    if _TARGET_KIND:
        return _TARGET_KIND[0]
    kind = jax.devices()[0].device_kind.lower()
    for name in ("gh200", "h200", "h100", "h800", "a100", "l40s", "l4", "a10"):
        if name in kind:
            return name
    return kind.replace("nvidia ", "").split()[0] if kind else "unknown"


def compute_capability() -> tuple[int, int] | None:
    """(major, minor) of the first CUDA device (or of ``target()``), or None off CUDA."""
    if aot_target() is not None:
        return divmod(aot_target(), 10)
    if not on_cuda():
        return None
    cc = getattr(jax.devices()[0], "compute_capability", None)
    if cc is None:
        return None
    major, minor = str(cc).split(".")
    return int(major), int(minor)
