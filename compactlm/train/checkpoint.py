"""Orbax checkpoints of the train state (model, optimizer, step = data position, RNG) + config.

A checkpoint is one orbax step directory with three items: `state` (the sharded TrainState),
`meta` (step, seed, wall-clock, metrics at save) and `config` (the resolved config), and, for a
model with training-only parameters (distillation's feature projections: `Program.extra_key`),
a fourth, `extra`, holding them and their optimizer state, so that `state` stays exactly the
plain Transformer's TrainState that eval / generate / export restore. Orbax writes
into a temporary directory and renames it on commit, so a crash mid-save leaves the previous
checkpoint as the latest valid one; half-written directories are ignored and cleaned up.

Failure paths (each exercised by tests/train/test_faults.py and scripts/fault_inject.py):
- a save that fails (disk full, file-size limit) is a CheckpointError naming the step; the
  previous checkpoints are untouched;
- an unreadable latest checkpoint (truncated, corrupt): `restore_latest` says which, falls back
  to the newest readable one, and moves the unreadable ones aside (never deletes them);
- a damaged one that orbax would still read (bytes changed in place: silently wrong weights, a
  NaN loss): each step directory holds `digest.json`, the sha256 of its every file written at
  save, checked before restoring; a mismatch is an unreadable checkpoint as above;
- two processes training in one run directory: `RunLock` makes the second refuse.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jax
import orbax.checkpoint as ocp
from flax import nnx


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
    return ocp.CheckpointManager(
        directory, options=options, item_names=("state", "meta", "config", "extra")
    )


def _is_state(x: Any) -> bool:
    return isinstance(x, nnx.State)


def _copy(s: nnx.State) -> nnx.State:
    return jax.tree.map(lambda x: x, s)


def _with(s: nnx.State, key: str, value: Any) -> nnx.State:
    s = _copy(s)
    s[key] = value
    return s


def split_extra(state: Any, key: str) -> tuple[Any, dict]:
    """(TrainState without parameter `key`, {"params": state.params[key], "opt": (...)}).

    `key` is a top-level entry of the params State; the optimizer state holds mirrors of the
    params State (Adam's mu and nu, ...), each of which loses the same entry into "opt", in tree
    order. A state without the key comes back unchanged with an empty extra.
    """
    found: list[Any] = []

    def strip(s: Any) -> Any:
        if _is_state(s) and key in s:
            s = _copy(s)  # (rebuilding State from items() would turn nested dicts into States)
            found.append(s.pop(key))
        return s

    params = strip(state.params)
    opt_state = jax.tree.map(strip, state.opt_state, is_leaf=_is_state)
    if not found:
        return state, {}
    return state.replace(params=params, opt_state=opt_state), {
        "params": found[0],
        "opt": tuple(found[1:]),
    }


def merge_extra(template: Any, plain: Any, extra: dict, key: str) -> Any:
    """The inverse of split_extra: `plain` with `extra` put back where `template` (a state of the
    full structure, abstract is fine) holds `key`."""
    if not extra:
        return plain
    opt_items = iter(extra["opt"])
    full, treedef = jax.tree.flatten(template.opt_state, is_leaf=_is_state)
    parts = jax.tree.leaves(plain.opt_state, is_leaf=_is_state)
    merged = [
        _with(p, key, next(opt_items)) if _is_state(t) and key in t else p
        for t, p in zip(full, parts, strict=True)
    ]
    params = _with(plain.params, key, extra["params"])
    return plain.replace(params=params, opt_state=jax.tree.unflatten(treedef, merged))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    meta: dict,
    config: dict,
    *,
    force: bool = False,
    extra_key: str | None = None,
) -> bool:
    """Save and wait until it is committed; returns False when orbax skipped it (same step).

    extra_key: parameters under that key (and their optimizer state) go to the `extra` item."""
    if step in manager.all_steps():
        return False
    _check_room(manager, step, state)
    items = {}
    if extra_key is not None:
        state, extra = split_extra(state, extra_key)
        if extra:
            items["extra"] = ocp.args.StandardSave(extra)
    try:
        saved = manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave(meta),
                config=ocp.args.JsonSave(config),
                **items,
            ),
            force=force,
        )
        manager.wait_until_finished()
    except Exception as e:  # OSError (ENOSPC, EFBIG) or orbax/tensorstore's wrapping of it
        previous = [s for s in manager.all_steps() if s != step]
        kept = f"step {max(previous)} and older are" if previous else "no earlier checkpoint is"
        raise CheckpointError(
            f"could not save checkpoint step {step} in {manager.directory} "
            f"({type(e).__name__}: {_first_line(e)}); {kept} untouched. Free disk space (or "
            "raise the file-size limit) and re-run the same command to resume"
        ) from e
    # Orbax's save returns once every process's files are committed (renamed into place).
    if saved and jax.process_index() == 0:
        try:
            write_digest(Path(manager.directory) / str(step))
        except OSError as e:  # the checkpoint itself is complete: keep it, unverified
            _warn(
                f"checkpoint step {step} is saved but its {DIGEST_FILE} could not be written "
                f"({type(e).__name__}: {_first_line(e)}); it will load unverified"
            )
    return saved


# sha256 of every file of a step directory, written into it after orbax's commit (extra files in
# a step directory are invisible to orbax: steps are listed by directory name, items restored by
# name, and max_to_keep deletes the whole directory, digest included). Orbax offers no hook
# between writing its tmp directory and renaming it, so a kill -9 in that gap (about one read of
# the checkpoint) leaves a step without digest: it then loads unverified, as a checkpoint saved
# before digests existed does; condemning it instead would discard a complete, good checkpoint.
DIGEST_FILE = "digest.json"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_digest(step_dir: Path) -> None:
    """step_dir/digest.json: {"sha256": {relative path: hex}} of every other file, sorted.

    tmp + fsync + rename: a kill or power loss mid-write leaves no digest (unverified), never a
    partial one that would condemn a good checkpoint.
    """
    tmp = step_dir / f"{DIGEST_FILE}.tmp"
    skip = {step_dir / DIGEST_FILE, tmp}
    files = sorted(p for p in step_dir.rglob("*") if p.is_file() and p not in skip)
    digests = {p.relative_to(step_dir).as_posix(): _sha256(p) for p in files}
    with tmp.open("w") as f:
        json.dump({"sha256": digests}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / DIGEST_FILE)


def verify_digest(step_dir: Path) -> str | None:
    """None when every file matches step_dir/digest.json, or there is none (saved before digests
    existed, or killed between commit and digest); else what differs, naming the first file."""
    path = step_dir / DIGEST_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())["sha256"]
        recorded = {str(rel): str(hex_) for rel, hex_ in recorded.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {DIGEST_FILE} is unreadable: {type(e).__name__}"
    differ = []
    for rel, want in sorted(recorded.items()):
        try:
            same = _sha256(step_dir / rel) == want
        except OSError:  # removed or unreadable since the save
            same = False
        if not same:
            differ.append(rel)
    if not differ:
        return None
    more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
    return f"file {differ[0]}{more} differs from its sha256 in {DIGEST_FILE}"


def _check_room(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Refuse a save that cannot fit (free disk space, the file-size limit) before writing.

    A write that fails midway is reported too (save's except), but orbax's background threads
    then print "Event loop is closed" tracebacks; checking first keeps the common case clean.
    """
    import jax

    need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
    previous = [s for s in manager.all_steps() if s != step]
    kept = f"step {max(previous)} and older are" if previous else "no earlier checkpoint is"
    where = f"could not save checkpoint step {step} in {manager.directory}"
    advice = f"{kept} untouched. Re-run the same command to resume once there is room"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raise CheckpointError(
            f"{where}: it needs up to {need:,} bytes in one file but the file-size limit "
            f"(ulimit -f) is {soft:,} bytes; {advice}"
        )
    free = shutil.disk_usage(manager.directory).free
    if free < need:
        raise CheckpointError(
            f"{where}: it needs {need:,} bytes but only {free:,} are free on its disk; {advice}"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    return manager.latest_step()


def restore(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    step: int | None = None,
    *,
    extra_key: str | None = None,
) -> tuple[Any, dict, dict]:
    """(state, meta, config) of `step` (default: latest), restored into `abstract_state`'s
    shapes, dtypes and shardings (extra_key: as saved by `save`, from the `extra` item)."""
    step = manager.latest_step() if step is None else step
    where = manager.directory
    if step is None:
        raise CheckpointError(f"no checkpoint found in {where}")
    if step not in manager.all_steps():
        raise CheckpointError(
            f"no checkpoint for step {step} in {where}; "
            f"available steps: {list(manager.all_steps())}"
        )
    older = [s for s in manager.all_steps() if s != step]
    # Before orbax reads it: changed bytes that still decode would restore silently wrong weights.
    damage = verify_digest(Path(where) / str(step))
    if damage is not None:
        raise CheckpointError(
            f"checkpoint step {step} in {where} could not be restored ({damage}); it was "
            f"damaged after it was saved. Older steps, if any, are left untouched: {older}"
        )
    target, extra_target = abstract_state, {}
    if extra_key is not None:
        target, extra_target = split_extra(abstract_state, extra_key)
    items = {"extra": ocp.args.StandardRestore(extra_target)} if extra_target else {}
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target),
                meta=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
                **items,
            ),
        )
    except Exception as e:  # orbax raises many types for truncated / corrupt / mismatched files
        raise CheckpointError(
            f"checkpoint step {step} in {where} could not be restored ({type(e).__name__}: "
            f"{_first_line(e)}); it is corrupt or does not match this "
            f"model config. Older steps, if any, are left untouched: {older}"
        ) from e
    state = restored.state
    if extra_target:
        state = merge_extra(abstract_state, state, restored.extra, extra_key)
    return state, restored.meta, restored.config


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ModelConfig fields that fix the shapes of the saved state: a checkpoint saved with other values
# cannot be restored into this model (checked from its config item, before orbax reads arrays).
SHAPE_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_ff",
    "tie_embeddings",
    "scan_layers",
)


def check_model_matches(manager: ocp.CheckpointManager, step: int, model: dict) -> None:
    """CheckpointError naming the fields when checkpoint `step` was saved for another shape.

    A mismatched restore inside orbax fails too, but leaves tensorstore callbacks that print
    pages of "Event loop is closed" tracebacks; this check reads one small JSON file instead.
    """
    path = Path(manager.directory) / str(step) / "config" / "metadata"
    try:
        saved = json.loads(path.read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable config item: the restore itself reports the checkpoint
    diffs = [
        f"model.{k}: checkpoint {saved[k]!r}, now {model.get(k)!r}"
        for k in SHAPE_FIELDS
        if k in saved and saved[k] != model.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint step {step} in {manager.directory} was saved for a different model "
            f"({'; '.join(diffs)}); drop those overrides or use the run's own config"
        )


def restore_latest(
    manager: ocp.CheckpointManager,
    abstract_state: Any,
    *,
    move_aside: bool,
    model: dict | None = None,
    warn: Callable[[str], None] = _warn,
    extra_key: str | None = None,
) -> tuple[Any, dict, dict]:
    """restore() of the newest checkpoint that reads; older ones are tried in turn.

    Each unreadable one is reported through `warn` (which step, why). Once an older one has
    restored, and only then, the unreadable newer ones are moved (with move_aside; never
    deleted) to RUN_DIR/unreadable_checkpoints/, so that the run can save those steps again.
    If none reads, nothing is moved and the error lists every step. model: the ModelConfig
    (as a dict) the state is for; a checkpoint saved for other shapes is a plain error.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise CheckpointError(f"no checkpoint found in {manager.directory}")
    if model is not None:
        check_model_matches(manager, steps[0], model)
    bad: list[int] = []
    reasons: list[str] = []
    for step in steps:
        try:
            restored = restore(manager, abstract_state, step, extra_key=extra_key)
        except CheckpointError as e:
            bad.append(step)
            reasons.append(str(e))
            continue
        for reason in reasons:  # said only when there was something to fall back to
            warn(f"{reason} — falling back to an older checkpoint")
        if bad and move_aside:
            aside = Path(manager.directory).parent / "unreadable_checkpoints"
            aside.mkdir(exist_ok=True)
            for b in bad:
                target = aside / f"{b}-{time.strftime('%Y%m%d-%H%M%S')}"
                os.replace(Path(manager.directory) / str(b), target)
                warn(f"moved unreadable checkpoint step {b} to {target} (not deleted)")
            manager.reload()
        if bad:
            warn(f"resuming from checkpoint step {step}")
        return restored
    raise CheckpointError(
        f"no readable checkpoint in {manager.directory}: steps {steps} could not be restored "
        f"(nothing was moved or deleted); step {steps[0]}: {reasons[0]}"
    )


class RunLock:
    """An exclusive lock on RUN_DIR/.lock for the process that trains in RUN_DIR.

    fcntl.flock: the kernel drops it when the process exits in any way (kill -9 included), so a
    crashed run never leaves a stale lock. The file names the holder for the error message.
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.path = Path(workdir) / ".lock"
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        f = self.path.open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown process"
            f.close()
            raise CheckpointError(
                f"run directory {self.path.parent} is in use by another process ({holder}); "
                "wait for it to finish, stop it, or use another workdir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%c')}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
