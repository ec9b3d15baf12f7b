"""Existing run directories as inputs: load one (eval, generate, a fine-tuning base, a teacher)
and fingerprint it (an adapter or a student records which base / teacher it was made from)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax import nnx

from compactlm.train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from compactlm.train.loop import Trainer


def _config_path(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {str(run_dir)!r} a compactlm run directory?")
    return path


def load_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Trainer:
    """A read-only Trainer holding the latest checkpoint of `run_dir` (nothing is written there).

    overrides: `key=value` strings applied to the saved config (e.g. `data.corpus=pydocs` to
    evaluate on another corpus). Missing directory / config / checkpoint: one-line errors.
    """
    from compactlm.config import apply_overrides, from_json
    from compactlm.train.loop import Trainer

    cfg = apply_overrides(from_json(_config_path(run_dir).read_text()), overrides)
    trainer = Trainer(cfg, run_dir, readonly=True)
    trainer.restore_or_init(require_checkpoint=True)
    return trainer


def load_model(run_dir: str | Path) -> tuple[Any, nnx.Module]:
    """(config, model) of a run's latest checkpoint without preparing its data (a base or a
    teacher for another corpus); fine-tuning runs come with their base rebuilt."""
    from compactlm.config import from_json
    from compactlm.train.finetune import read_base
    from compactlm.train.loop import program_and_state

    cfg = from_json(_config_path(run_dir).read_text())
    program, state = program_and_state(cfg, run_dir, base=read_base(run_dir))
    return cfg, program.model(state)


def latest_checkpoint_dir(run_dir: str | Path) -> Path:
    """checkpoints/<latest step> of a run; CheckpointError when there is none."""
    root = Path(run_dir) / "checkpoints"
    steps = sorted(
        (int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if root.is_dir()
        else ()
    )
    if not steps:
        raise CheckpointError(f"no checkpoint found in {root}")
    return root / str(steps[-1])


def run_fingerprint(run_dir: str | Path) -> str:
    """sha256 over config.json and every file of the latest checkpoint (names and bytes).

    Identifies the exact weights a derived run was made from; reads the whole checkpoint once
    (fine at compact-model sizes: 3 MB for tiny, 500 MB for base).
    """
    digest = hashlib.sha256()
    digest.update(_config_path(run_dir).read_bytes())
    ckpt_dir = latest_checkpoint_dir(run_dir)
    for path in sorted(p for p in ckpt_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(ckpt_dir)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
