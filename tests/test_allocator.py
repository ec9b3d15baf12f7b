"""The CLI process runs with mimalloc preloaded (its /proc/self/maps); the opt-out; bad values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compactlm import allocator

LINUX = allocator.supported()
needs_linux = pytest.mark.skipif(not LINUX, reason="preloading is Linux x86-64 / aarch64 only")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    env.update(extra)
    return env


def _run(args: list[str], **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=_env(**extra), capture_output=True, text=True, timeout=300)


def _allocator_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("allocator: "))


@needs_linux
def test_the_wheel_is_installed_with_compactlm():
    # A dependency on Linux x86-64 / aarch64 (setup.py): the fast path needs no manual step.
    path = allocator.mimalloc_path()
    assert path is not None and path.name == "libmimalloc.so.3" and path.is_file()


@needs_linux
@pytest.mark.parametrize("entry", ["python -m compactlm", "console script"])
def test_cli_process_maps_mimalloc(entry):
    script = Path(sys.executable).parent / "compactlm"
    if entry == "console script" and not script.exists():
        pytest.skip("compactlm console script not installed next to this interpreter")
    cmd = [sys.executable, "-m", "compactlm"] if entry != "console script" else [str(script)]
    proc = _run([*cmd, "info", "nano"])
    assert proc.returncode == 0, proc.stderr
    line = _allocator_line(proc.stdout)
    # `info` reports what /proc/self/maps of the CLI process maps, not what was asked for.
    assert line.startswith(f"allocator: mimalloc ({allocator.mimalloc_path().resolve()}"), line


@needs_linux
def test_opt_out_keeps_the_system_allocator():
    proc = _run([sys.executable, "-m", "compactlm", "info", "nano"], COMPACTLM_ALLOCATOR="system")
    assert proc.returncode == 0, proc.stderr
    assert _allocator_line(proc.stdout) == "allocator: system (COMPACTLM_ALLOCATOR=system)"


def test_bad_value_is_one_line_exit_2():
    proc = _run([sys.executable, "-m", "compactlm", "info"], COMPACTLM_ALLOCATOR="fastest")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "compactlm: error: COMPACTLM_ALLOCATOR='fastest' is not valid; use one of: auto, "
        "mimalloc, system, or a path to a malloc shared library"
    ]


@needs_linux
def test_loaded_reads_the_real_process_maps():
    code = "from compactlm.allocator import loaded; print(loaded()[0])"
    lib = str(allocator.mimalloc_path())
    assert _run([sys.executable, "-c", code]).stdout.strip() == "system"
    assert _run([sys.executable, "-c", code], LD_PRELOAD=lib).stdout.strip() == "mimalloc"


def test_loaded_parses_maps_lines():
    maps = (
        "7f0000000000-7f0000001000 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f0000002000-7f0000003000 r-xp 00001000 08:01 99 /x/lib/libtcmalloc_minimal.so.4.5.10\n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
    )
    assert allocator.loaded(maps) == ("tcmalloc", "/x/lib/libtcmalloc_minimal.so.4.5.10")
    assert allocator.loaded(maps.splitlines()[0]) == ("system", None)


def test_ensure_reexecutes_once_with_ld_preload(monkeypatch, tmp_path):
    lib = tmp_path / "libmimalloc.so.3"
    lib.write_bytes(b"")
    calls = []
    monkeypatch.setattr(allocator, "supported", lambda: True)
    monkeypatch.setattr(allocator, "mimalloc_path", lambda: lib)
    monkeypatch.setattr(allocator, "loaded", lambda maps=None: ("system", None))
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "compactlm", "train", "tiny"])
    monkeypatch.setenv("LD_PRELOAD", "/user/libfoo.so")
    monkeypatch.delenv(allocator.ENV, raising=False)
    allocator.ensure()
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == [sys.executable, "-m", "compactlm", "train", "tiny"]
    assert env["LD_PRELOAD"] == f"{lib}:/user/libfoo.so"
    # The child restores the user's LD_PRELOAD and never re-executes again.
    monkeypatch.setattr(os, "environ", dict(env))
    allocator.ensure()
    assert len(calls) == 1 and os.environ["LD_PRELOAD"] == "/user/libfoo.so"
    assert allocator._MARK not in os.environ


def test_ensure_does_nothing_when_opted_out_or_elsewhere(monkeypatch):
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("must not re-execute"))
    monkeypatch.setenv(allocator.ENV, "system")
    allocator.ensure()
    monkeypatch.setenv(allocator.ENV, "auto")
    monkeypatch.setattr(allocator, "supported", lambda: False)
    allocator.ensure()
    assert allocator.describe().startswith("system (no preloaded allocator on ")
