"""Ctrl-C and SIGTERM: a flag the signal sets, safe points that check it, and the exit code.

A long command runs inside `handling()`: SIGINT / SIGTERM only set a flag, and the work stops at
its next safe point (a training step, after its checkpoint; a compressed block; an export before
its rename) by raising `Interrupted`. `cli.main` prints it as one line and exits 128 + the
signal's number (130 SIGINT, 143 SIGTERM: what a shell reports for a process the signal killed),
so `compactlm train ... && compactlm quantize ...` never goes on with half a model. A second
signal does not wait for a safe point: KeyboardInterrupt at once (`cli.main`: one line, exit 130).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal stopped the command at a safe point. A BaseException, as KeyboardInterrupt is,
    so that an `except Exception` on the way up (a failed row, a fallback) cannot swallow it."""

    def __init__(self, signame: str, detail: str = "stopped") -> None:
        super().__init__(f"{signame}: {detail}")
        self.signame, self.detail = signame, detail

    @property
    def exit_code(self) -> int:
        return exit_code(self.signame)


def exit_code(signame: str) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signal.Signals[signame].value


# One flag per process; nested handling() scopes (a Trainer inside `prune`) share it.
_depth = 0
_received: str | None = None
_previous: dict[int, Any] = {}


def _handle(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:  # the second Ctrl-C: stop without waiting for a safe point
        raise KeyboardInterrupt
    _received = signal.Signals(signum).name


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Inside, SIGINT / SIGTERM set the flag that `check()` / `received()` read.

    SIGXFSZ (file-size limit) is ignored too: a write past `ulimit -f` then fails with EFBIG,
    which a checkpoint save reports as a one-line error, instead of the process dying.
    """
    global _depth, _received
    if _depth == 0:
        _received = None
        for sig in (*SIGNALS, signal.SIGXFSZ):
            handler = signal.SIG_IGN if sig == signal.SIGXFSZ else _handle
            try:
                _previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: signals keep their handlers
                pass
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for sig, handler in _previous.items():
                signal.signal(sig, handler)
            _previous.clear()
            _received = None  # a later scope (the next command in a test process) starts clean


def received() -> str | None:
    """The name of the signal received inside the current handling() scope, if any."""
    return _received


def check(detail: str) -> None:
    """A safe point: raise Interrupted(signal, detail) if a signal arrived (no-op outside
    handling(), e.g. a library call from a test)."""
    if _received is not None:
        raise Interrupted(_received, detail)


@contextlib.contextmanager
def writing(out: str | Path | None) -> Iterator[None]:
    """handling() for a command whose product, the new directory `out`, is written at its end
    only (quantize, prune, export): an Interrupted says what `out` holds (as a rule nothing); a
    signal that came after the last safe point, `out` then complete, still ends with its code."""
    with handling():
        try:
            yield
        except Interrupted as e:
            raise Interrupted(e.signame, f"{e.detail}; {_holds(out)}") from None
        check(f"received while {out} was written; it is complete")


def _holds(out: str | Path | None) -> str:
    from compactlm.train.workdir import MARKER  # the claim, not an output

    path = Path(out) if out else None
    names = sorted(p.name for p in path.iterdir()) if path and path.is_dir() else []
    names = [name for name in names if name != MARKER]
    if not names:
        return f"nothing was written to {out}"
    return f"{out} holds only {', '.join(names)} (no finished output)"


def wait_child(child: subprocess.Popen) -> int:
    """Wait for a child compactlm (sweep, recipe); its exit code, or Interrupted.

    Ctrl-C reaches the child through the terminal's process group; SIGTERM is forwarded. Either
    way the parent waits for the child to stop at its own safe point, then raises Interrupted
    (killing it mid-save, as subprocess.run does on KeyboardInterrupt, would lose the step). SIGINT
    is not forwarded: the child would see it twice and stop without saving.
    """
    received_here: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        received_here.append(signum)
        if signum == signal.SIGTERM:
            child.send_signal(signum)

    previous = {}
    for sig in SIGNALS:
        try:
            previous[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread
            pass
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received_here:
        raise Interrupted(signal.Signals(received_here[0]).name, f"the child exited {code}")
    return code
