"""NumPy stand-in for torch tensors so raw Triton kernels run in the interpreter (no torch, no GPU).

Usage (tests, or any CPU debugging of a raw ``@triton.jit`` kernel; needs ``TRITON_INTERPRET=1``
set before the kernel module was imported, as ``tests/conftest.py`` does)::

    y = interpret_call(kernel, grid, x, w, M, N, K, out_shape=((M, N), np.float32), BLOCK_M=16)

``interpret_call`` mirrors ``jax_triton.triton_call``: positional ``args`` bind to the kernel's
parameters in order (arrays become pointers, Python scalars stay scalars), one zero-filled output
buffer per ``out_shape`` entry binds to the trailing pointer parameters, keywords are
constexpr meta-parameters, and ``grid`` is a tuple or a callable of the meta-parameters. It
returns NumPy arrays (a single array when ``out_shape`` is a single shape). So kernel launch code
written once against ``triton_call``'s calling convention can be exercised here unchanged.

What triton 3.6's interpreter (``triton/runtime/interpreter.py``) touches on a tensor argument:
``data_ptr()``, ``dtype`` (its ``str`` ends in a canonical name such as ``float32``/``bfloat16``),
``untyped_storage()`` (→ ``data_ptr()``, ``cpu()``), ``new_empty(0, device=)``, ``set_(storage,
offset, size, stride)``, ``storage_offset()``, ``size()``, ``stride()`` and ``copy_()``. The
interpreter reads and writes memory through raw addresses, so ``TensorView`` keeps the NumPy
buffer alive and hands out its address; host and "device" are the same memory here.

Known interpreter limits (measured with triton 3.6.0): bf16 arithmetic is wrong (ops act on the
raw bit pattern; f32→bf16 truncates), so compute in f32 and test bf16 numerics on a GPU;
``tl.inline_asm_elementwise`` does not run; loops with runtime bounds need numpy < 2.4.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def interpreter_enabled() -> bool:
    """True when ``@triton.jit`` functions decorated from now on run in the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class _Storage:
    """The ``untyped_storage()`` of a ``TensorView``: the same memory, seen as bytes."""

    def __init__(self, view: TensorView):
        self._view = view

    def data_ptr(self) -> int:
        return self._view.data_ptr()

    def cpu(self) -> _Storage:
        return self

    def copy_(self, other: _Storage) -> _Storage:
        self._view.copy_(other)
        return self


class TensorView:
    """A NumPy array dressed as the slice of ``torch.Tensor`` the Triton interpreter uses."""

    def __init__(self, array: np.ndarray):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"TensorView wraps a numpy array, got {type(array).__name__}")
        self.array = array

    # --- what the launcher and the interpreter read
    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def untyped_storage(self) -> _Storage:
        return _Storage(self)

    def storage_offset(self) -> int:
        return 0

    def size(self) -> tuple[int, ...]:
        return self.array.shape

    def stride(self) -> tuple[int, ...]:
        return tuple(s // self.array.itemsize for s in self.array.strides)

    def dim(self) -> int:
        return self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    # --- how it makes its "host copy": an empty tensor re-pointed at our storage
    def new_empty(self, *shape: int, device: str | None = None) -> TensorView:
        return TensorView(np.empty(shape, dtype=self.array.dtype))

    def set_(self, storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int]):
        # Host and device memory are the same NumPy buffer: alias it instead of copying.
        self.array = storage._view.array
        return self

    def copy_(self, other: TensorView | _Storage) -> TensorView:
        src = other._view.array if isinstance(other, _Storage) else other.array
        if src.ctypes.data != self.array.ctypes.data:
            np.copyto(self.array, src)
        return self

    def cpu(self) -> TensorView:
        return self

    def __repr__(self) -> str:
        return f"TensorView(shape={self.array.shape}, dtype={self.array.dtype})"


def _as_numpy(a: Any) -> np.ndarray:
    """A writeable, C-contiguous host copy (jax arrays, numpy arrays, array-likes)."""
    return np.array(a, copy=True, order="C")


def _shape_dtype(spec: Any) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(spec, "shape") and hasattr(spec, "dtype"):  # jax.ShapeDtypeStruct, arrays
        return tuple(spec.shape), np.dtype(spec.dtype)
    shape, dtype = spec
    return tuple(shape), np.dtype(dtype)


def _is_spec(x: Any) -> bool:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return True
    return (
        isinstance(x, tuple)
        and len(x) == 2
        and isinstance(x[0], (tuple, list))
        and all(isinstance(d, (int, np.integer)) for d in x[0])
    )


def _launch_arg(a: Any) -> Any:
    """Arrays become pointers (``TensorView``); 0-d arrays and scalars stay Python scalars."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return TensorView(_as_numpy(a)) if np.ndim(a) else np.asarray(a).item()
    return a


def interpret_call(
    kernel: Any,
    grid: tuple[int, ...] | int | Callable[[dict[str, Any]], tuple[int, ...]],
    *args: Any,
    out_shape: Any,
    **meta: Any,
) -> np.ndarray | list[np.ndarray]:
    """Run a raw ``@triton.jit`` kernel in the interpreter with ``triton_call``'s conventions.

    ``out_shape``: a ``(shape, dtype)`` pair or object with ``.shape``/``.dtype``, or a list of
    them. Outputs start zero-filled (split-K kernels that accumulate can rely on it).
    Launch options that mean nothing here (``num_warps``, ``num_stages``, ``num_ctas``,
    ``compute_capability``) are
    dropped so the same keyword set can be passed to both launchers.
    """
    if not interpreter_enabled():
        raise RuntimeError(
            "interpret_call needs TRITON_INTERPRET=1 set before the kernel module is imported "
            "(tests/conftest.py does this); the kernel was compiled for a GPU instead"
        )
    single = _is_spec(out_shape)
    specs = [out_shape] if single else list(out_shape)
    outs = [np.zeros(*_shape_dtype(s)) for s in specs]
    launch_args = [_launch_arg(a) for a in args]
    for k in ("num_warps", "num_stages", "num_ctas", "compute_capability"):
        meta.pop(k, None)
    if callable(grid):
        grid = grid(dict(meta))
    if isinstance(grid, int):
        grid = (grid,)
    kernel[tuple(grid)](*launch_args, *[TensorView(o) for o in outs], **meta)
    return outs[0] if single else outs
