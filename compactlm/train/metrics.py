"""Run metrics: metrics.jsonl, TensorBoard event files (tensorboardX) and a tqdm progress bar."""

from __future__ import annotations

import json
import os
import sys
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
