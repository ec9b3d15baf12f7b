"""Run metrics: metrics.jsonl, TensorBoard event files (tensorboardX) and tqdm progress bars."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax


class MetricsWriter:
    """Appends one JSON object per record to RUN_DIR/metrics.jsonl and mirrors scalars to
    TensorBoard. Only process 0 writes (multi-host runs log once)."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True) -> None:
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = self.path.open("a") if self.enabled else None
        if self._file is not None and self.path.stat().st_size:
            with self.path.open("rb") as f:  # a crash mid-line: start the next record on its own
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._file.write("\n")
        self._tb = None
        if self.enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class Progress:
    """A progress bar with loss and tokens/s; tqdm supplies the rate and ETA."""

    def __init__(self, *, total: int, initial: int = 0, enabled: bool = True) -> None:
        self._bar = None
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )

    def update_to(
        self, step: int, *, loss: float, tps: float, extra: dict[str, float] | None = None
    ) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        shown = "".join(f" | {name} {value:.4f}" for name, value in (extra or {}).items())
        self._bar.set_postfix_str(f"loss {loss:.4f}{shown} | {tps:,.0f} tok/s", refresh=True)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class StageProgress:
    """One named phase of `total` equal units (blocks, tensors), for commands that otherwise run
    silent for long.

    On a terminal: a tqdm bar, ``calibrating + GPTQ int4: block 3/8 [████    ] 2.10s/block, 00:10
    left``. Elsewhere (a log file, a pipe, tests) tqdm's carriage returns would be noise, so:
    plain lines on stderr that name the phase and the total, one per unit
    (``gptq int4: block 3 of 8 done in 2.1 s``), or about `lines` in all when the units are many
    and quick (``lines=10``: ``reading weights: 120 of 291 tensors, 14.2 s``).
    `enabled=False` shows nothing; only process 0 shows anything.
    """

    def __init__(
        self,
        label: str,
        *,
        total: int,
        unit: str = "block",
        enabled: bool = True,
        lines: int | None = None,
        tty: bool | None = None,
    ) -> None:
        self.label, self.total, self.unit, self.n = label, total, unit, 0
        self._t0 = self._last = time.perf_counter()
        self._enabled = enabled and total > 0 and jax.process_index() == 0
        self._every = max(1, math.ceil(total / lines)) if lines else 1
        self._bar = None
        if self._enabled and (stderr_is_tty() if tty is None else tty):
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=label,
                unit=unit,
                file=sys.stderr,
                dynamic_ncols=True,
                smoothing=0,  # the mean over the units so far: blocks cost alike
                bar_format="{desc}: " + unit + " {n_fmt}/{total_fmt} [{bar}] {rate_inv_fmt}, "
                "{remaining} left",
            )

    def advance(self) -> float:
        """One more unit done; returns the seconds it took (since the previous one)."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.n += 1
        if self._bar is not None:
            self._bar.update(1)
        elif self._enabled and (self.n % self._every == 0 or self.n == self.total):
            if self._every == 1:
                text = f"{self.label}: {self.unit} {self.n} of {self.total} done in {seconds:.1f} s"
            else:
                text = (
                    f"{self.label}: {self.n} of {self.total} {self.unit}s, {now - self._t0:.1f} s"
                )
            print(text, file=sys.stderr, flush=True)
        return seconds

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def stage(label: str, *, enabled: bool = True) -> Iterator[None]:
    """``label ...`` on stderr before a step that runs long without output, ``label: 3.2 s``
    after it (lines, not a bar: the step has no units to count)."""
    if not enabled or jax.process_index() != 0:
        yield
        return
    print(f"{label} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    yield
    print(f"{label}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
