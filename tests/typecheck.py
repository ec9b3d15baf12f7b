"""The checker behind tests/conftest.py's jaxtyping import hook: beartype on array annotations.

jaxtyping's hook decorates every function of an instrumented module with
`jaxtyped(typechecker=arrays_only)`; this keeps only the annotations that mention a jaxtyping
array type (`Float[Array, "B T V"]`, `Int[Array, "B T"] | None`, tuples of them) and lets
beartype check those, binding the shape letters across the call. Other annotations (configs,
dtypes, modules) are documentation for readers and static checkers, not checked here.
"""

import pathlib
import typing

import beartype
from jaxtyping import AbstractArray, install_import_hook

_PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "compactlm"
# Every compactlm module whose source uses jaxtyping (the Triton kernel modules do not).
JAXTYPED_MODULES: list[str] = sorted(
    ".".join(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
    for path in _PACKAGE.rglob("*.py")
    if "jaxtyping" in path.read_text(encoding="utf-8")
)


def _has_array(annotation: typing.Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return True
    return any(_has_array(arg) for arg in typing.get_args(annotation))


def arrays_only(fn: typing.Callable) -> typing.Callable:
    """beartype(fn) on fn's array annotations only (fn itself if it has none)."""
    kept = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if _has_array(v)}
    if not kept:
        return fn
    fn.__annotations__ = kept
    return beartype.beartype(fn)


def install() -> None:
    """Instrument JAXTYPED_MODULES (call before any of them is imported)."""
    install_import_hook(JAXTYPED_MODULES, "tests.typecheck.arrays_only")
