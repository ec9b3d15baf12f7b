"""The process's malloc: the `compactlm` entry point re-executes itself with mimalloc preloaded.

Why: XLA:CPU allocates every execution's temporary buffer (325,406,720 bytes for the `tiny` train
step) with `posix_memalign` and frees it when the step ends. glibc serves any block above its mmap
threshold (at most 32 MiB, so `MALLOC_MMAP_THRESHOLD_` / `GLIBC_TUNABLES` cannot lift it past
310 MiB) with a fresh `mmap` and hands it back with `munmap`, so every step faults the whole
buffer in again, page by page: ~2 M minor faults and ~a quarter of the process's CPU time in the
kernel over a 23-step `bench train tiny`. mimalloc (the `cmeel-mimalloc` wheel, a dependency on
Linux x86-64 / aarch64) keeps freed segments mapped and reuses them (docs/benchmarks.md).

Nothing inside the process can swap the allocator once it runs, and jaxlib 0.11 exposes no
allocator hook (the C++ `CpuClientOptions` has one, the Python `make_cpu_client` does not) nor
any XLA flag that keeps the temporary buffer between executions; so `ensure()` re-executes the
interpreter with the same arguments and `LD_PRELOAD` set, before JAX is imported. The child
restores the caller's `LD_PRELOAD`, so subprocesses it starts are not preloaded.

`COMPACTLM_ALLOCATOR`:
  auto      (default) mimalloc where the wheel is installed on Linux x86-64 / aarch64, else system
  mimalloc  the same, and say why when it cannot be used
  system    the C library's malloc: the opt-out
  PATH      a malloc shared library to preload instead (e.g. libtcmalloc_minimal.so.4)

Library use (`import compactlm` in your own script): call `compactlm.allocator.ensure()` at the
top of the script, before anything imports JAX (it re-executes the script the same way), or start
it as `LD_PRELOAD=$(python -m compactlm.allocator --path) python script.py`.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ENV = "COMPACTLM_ALLOCATOR"
CHOICES = ("auto", "mimalloc", "system")
# Set only in the re-executed child: the LD_PRELOAD the user had, restored for its subprocesses.
_MARK = "_COMPACTLM_PRELOAD_WAS"
# Shared-library name stems that replace malloc, as they appear in /proc/self/maps.
KNOWN = {"libmimalloc": "mimalloc", "libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc"}


class AllocatorError(ValueError):
    """A bad COMPACTLM_ALLOCATOR value (one-line message naming the valid ones)."""


def supported() -> bool:
    """Preloading is done on Linux x86-64 and aarch64 only (where the wheel exists)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")


def requested() -> str:
    """The COMPACTLM_ALLOCATOR value: one of CHOICES, or an existing library path."""
    value = os.environ.get(ENV, "auto").strip() or "auto"
    if value in CHOICES:
        return value
    if "/" in value:
        if not Path(value).is_file():
            raise AllocatorError(f"{ENV}={value!r}: no such file")
        return value
    raise AllocatorError(
        f"{ENV}={value!r} is not valid; use one of: {', '.join(CHOICES)}, or a path to a "
        "malloc shared library"
    )


def mimalloc_path() -> Path | None:
    """libmimalloc.so.3 from the installed cmeel-mimalloc wheel, or None."""
    from importlib import metadata

    try:
        dist = metadata.distribution("cmeel-mimalloc")
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.startswith("libmimalloc.so.") and file.name.count(".") == 2:  # .so.3
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    return None


def _wanted_library(choice: str) -> Path | None:
    if choice == "system" or not supported():
        return None
    if choice in ("auto", "mimalloc"):
        return mimalloc_path()
    return Path(choice)


def loaded(maps: str | None = None) -> tuple[str, str | None]:
    """(name, path) of the malloc replacement mapped into this process, else ("system", None).

    Reads /proc/self/maps (or the given text): the allocator really in use, not the one asked for.
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:  # not Linux
            return "system", None
    for line in maps.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        stem = Path(path).name.split(".so")[0].split("-")[0].split("_")[0]
        if stem in KNOWN:
            return KNOWN[stem], path
    return "system", None


def describe() -> str:
    """One line for start-up / `info`: the active allocator and how to change it."""
    name, path = loaded()
    if name != "system":
        return f"{name} ({path}); {ENV}=system to use the C library's malloc"
    try:
        choice = requested()
    except AllocatorError as e:
        return f"system ({e})"
    if choice == "system":
        return f"system ({ENV}=system)"
    if not supported():
        return f"system (no preloaded allocator on {sys.platform}/{platform.machine()})"
    if _wanted_library(choice) is None:
        return "system (cmeel-mimalloc not installed: pip install cmeel-mimalloc trains faster)"
    if _reexecuted:
        return f"system ({_wanted_library(choice)} could not be preloaded)"
    return "system (not started through the compactlm entry point; see compactlm.allocator)"


_reexecuted = False  # this process is the child that ensure() started


def ensure() -> None:
    """Re-execute this process once with the chosen allocator preloaded (entry points only).

    Returns at once when it is already loaded, opted out, unavailable, or this is the re-executed
    child (a library that fails to preload cannot cause a loop). Raises AllocatorError for a bad
    COMPACTLM_ALLOCATOR.
    """
    global _reexecuted
    if _MARK in os.environ:  # the re-executed child: put the caller's LD_PRELOAD back
        was = os.environ.pop(_MARK)
        _reexecuted = True
        if was:
            os.environ["LD_PRELOAD"] = was
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    library = _wanted_library(requested())
    if library is None or loaded()[0] != "system":
        return
    env = dict(os.environ)
    env[_MARK] = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library}:{env[_MARK]}" if env[_MARK] else str(library)
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """`python -m compactlm.allocator [--path]`: print the library to preload, or the status."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--path"]:
        library = _wanted_library(requested())
        if library is None:
            print("compactlm.allocator: no allocator to preload here", file=sys.stderr)
            return 1
        print(library)
        return 0
    print(f"allocator: {describe()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AllocatorError as e:
        print(f"compactlm.allocator: error: {e}", file=sys.stderr)
        sys.exit(2)
