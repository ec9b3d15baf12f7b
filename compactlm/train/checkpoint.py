"""Orbax checkpoints of the train state (model, optimizer, step = data position, RNG) + config.

A checkpoint is one orbax step directory with three items: `state` (the sharded TrainState),
`meta` (step, seed, wall-clock, metrics at save) and `config` (the resolved config). Orbax writes
into a temporary directory and renames it on commit, so a crash mid-save leaves the previous
checkpoint as the latest valid one; half-written directories are ignored and cleaned up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A missing, unreadable or mismatched checkpoint; the message says which and where."""


def make_manager(workdir: str | os.PathLike, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
    directory = Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        # Synchronous saves: a SIGTERM handler or a NaN stop must know the checkpoint is on disk.
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta", "config"))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    meta: dict,
    config: dict,
    *,
    force: bool = False,
) -> bool:
    """Save and wait until it is committed; returns False when orbax skipped it (same step)."""
    if step in manager.all_steps():
        return False
    saved = manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta),
            config=ocp.args.JsonSave(config),
        ),
        force=force,
    )
    manager.wait_until_finished()
    return saved


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    return manager.latest_step()


def restore(
    manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
) -> tuple[Any, dict, dict]:
    """(state, meta, config) of `step` (default: latest), restored into `abstract_state`'s
    shapes, dtypes and shardings."""
    step = manager.latest_step() if step is None else step
    where = manager.directory
    if step is None:
        raise CheckpointError(f"no checkpoint found in {where}")
    if step not in manager.all_steps():
        raise CheckpointError(
            f"no checkpoint for step {step} in {where}; "
            f"available steps: {list(manager.all_steps())}"
        )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        raise CheckpointError(
            f"checkpoint step {step} in {where} could not be restored ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt or does not match this "
            "model config. Older steps, if any, are left untouched: "
            f"{[s for s in manager.all_steps() if s != step]}"
        ) from e
    return restored.state, restored.meta, restored.config
