"""Failure paths of training: kill -9 (also inside a save), corrupt checkpoints (bytes changed in
place included), a full disk, two trainers on one directory, NaN/Inf. The long version is
scripts/fault_inject.py."""

import dataclasses
import errno
import importlib.util
import os
import random
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from compactlm.config import make_config
from compactlm.train import checkpoint as ckpt
from compactlm.train.loop import Trainer, TrainingDiverged, load_metrics, run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fault_inject.py"


def _script():
    spec = importlib.util.spec_from_file_location("fault_inject", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nano(*overrides: str):
    base = [
        "train.progress=false",
        "train.tensorboard=false",
        "train.eval_every=0",
        "train.log_every=1",
        "data.corpus=pydocs",
        "mesh.devices=1",
    ]
    return make_config("nano", [*base, *overrides])


def losses(workdir) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in load_metrics(workdir) if "train/loss" in m}


# --- processes: kill -9 and a file-size limit (a few trials; the script runs >= 20) ----------


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The script's trial functions with a shared reference run (fewer steps than the script)."""
    fi = _script()
    fi.STEPS, fi.EVERY = 12, 4
    root = tmp_path_factory.mktemp("faults")
    return fi, root, fi.reference(root)


@pytest.mark.parametrize(
    "mode, seed",
    [pytest.param("steps", 1, marks=pytest.mark.slow), ("save", 2)],  # CI: the kill inside a save
)
def test_kill_9_resumes_from_last_complete_checkpoint_bit_exact(faults, mode, seed):
    fi, root, ref = faults
    result = fi.kill_trial(root, ref, random.Random(seed), mode)
    assert result["killed"], result
    assert result["ok"], result
    if mode == "save":
        # The kill landed between the save's start and its end (seeded: checked, not hoped).
        assert result["in_save"], result


@pytest.mark.slow  # three more processes; the in-process test below covers the same check
def test_file_size_limit_during_save_is_a_clear_error_and_keeps_the_previous(faults):
    fi, root, ref = faults
    result = fi.fsize_trial(root, ref, random.Random(3))
    assert result["ok"], result


# --- in-process ------------------------------------------------------------------------------


def _corrupt(step_dir: Path, how: str) -> list[Path]:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
    if how == "in_place":
        # Bit rot or a bad copy: 64 random bytes over the middle of the largest array-data chunk,
        # its size kept, which orbax still decodes (into other weights: see the eval test).
        files = [max((p for p in files if p.parent.name == "d"), key=lambda p: p.stat().st_size)]
    for p in files:
        if how == "truncate":
            with p.open("r+b") as f:
                f.truncate(p.stat().st_size // 2)
        elif how == "in_place":
            with p.open("r+b") as f:
                f.seek(p.stat().st_size // 2)
                f.write(np.random.default_rng(0).bytes(64))
        else:
            p.write_bytes(b"\0garbage" * 8)
    return files


@pytest.mark.parametrize(
    "how", ["truncate", "in_place", pytest.param("garbage", marks=pytest.mark.slow)]
)
def test_unreadable_latest_checkpoint_falls_back_and_deletes_nothing(tmp_path, capsys, how):
    cfg = nano("train.steps=6", "train.checkpoint_every=2")
    run(cfg, tmp_path / "straight")
    run(cfg, tmp_path / "run")
    step_dir = tmp_path / "run" / "checkpoints" / "6"
    damaged = {p.relative_to(step_dir): p.read_bytes() for p in _corrupt(step_dir, how)}
    capsys.readouterr()

    resumed = run(cfg, tmp_path / "run")  # the same command again
    err = capsys.readouterr().err
    assert re.search(r"checkpoint step 6 in \S+ could not be restored", err), err
    assert "resuming from checkpoint step 4" in err
    assert resumed.summary["start_step"] == 4 and resumed.summary["step"] == 6
    # The unreadable checkpoint is kept, byte for byte, beside the run's checkpoints.
    (aside,) = (tmp_path / "run" / "unreadable_checkpoints").iterdir()
    assert aside.name.startswith("6-")
    assert {rel: (aside / rel).read_bytes() for rel in damaged} == damaged
    # The re-trained steps 5-6 equal the uninterrupted run's.
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "run")
    assert a == {s: b[s] for s in a}


def test_eval_falls_back_without_moving_anything(tmp_path, capsys):
    from compactlm.train.loop import load_run

    cfg = nano("train.steps=4", "train.checkpoint_every=2")
    run(cfg, tmp_path)
    _corrupt(tmp_path / "checkpoints" / "4", "truncate")
    trainer = load_run(tmp_path)  # read-only, as eval / generate / a teacher load it
    assert int(trainer.state.step) == 2
    assert "checkpoint step 4" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "4").is_dir()
    # None readable: an error listing every step, and still nothing moved.
    _corrupt(tmp_path / "checkpoints" / "2", "garbage")
    with pytest.raises(ckpt.CheckpointError, match=r"no readable checkpoint .* steps \[4, 2\]"):
        Trainer(cfg, tmp_path).restore_or_init()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]
    assert not (tmp_path / "unreadable_checkpoints").exists()


def _state_bytes(trainer: Trainer) -> bytes:
    return b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(trainer.state))


def test_bytes_changed_in_place_eval_falls_back_or_exits_2_naming_the_file(tmp_path, capsys):
    from compactlm.cli import main
    from compactlm.train.loop import load_run

    run(nano("train.steps=4", "train.checkpoint_every=2"), tmp_path)
    step4 = tmp_path / "checkpoints" / "4"
    saved = _state_bytes(load_run(tmp_path))
    (damaged,) = _corrupt(step4, "in_place")
    name = damaged.relative_to(step4).as_posix()
    # The damage orbax cannot see: without its digest (as saved before digests existed) step 4
    # restores, silently, into other values; eval would report their loss and exit 0.
    os.replace(step4 / ckpt.DIGEST_FILE, tmp_path / ckpt.DIGEST_FILE)
    unverified = load_run(tmp_path)
    assert int(unverified.state.step) == 4 and _state_bytes(unverified) != saved
    os.replace(tmp_path / ckpt.DIGEST_FILE, step4 / ckpt.DIGEST_FILE)
    capsys.readouterr()

    trainer = load_run(tmp_path)  # as eval / generate load it: read-only
    assert int(trainer.state.step) == 2
    err = capsys.readouterr().err
    found = rf"checkpoint step 4 in \S+ could not be restored \(file {re.escape(name)} differs"
    assert re.search(found, err), err
    assert "resuming from checkpoint step 2" in err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]
    assert not (tmp_path / "unreadable_checkpoints").exists()

    # No intact checkpoint left: eval exits 2 with one line naming the step and the file.
    _corrupt(tmp_path / "checkpoints" / "2", "in_place")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("compactlm eval: error: no readable checkpoint") and err.count("\n") == 1
    assert re.search(rf"steps \[4, 2\] .* step 4: .*\(file {re.escape(name)} differs", err), err
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = nano("train.steps=4", "train.checkpoint_every=2")
    trainer = Trainer(cfg, tmp_path)
    trainer.restore_or_init()
    trainer.save()  # step 0
    before = {p: p.read_bytes() for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(ckpt.CheckpointError) as e:
        trainer.train()
    message = str(e.value)
    assert "could not save checkpoint step 2" in message and "No space left" in message
    assert "step 0 and older are untouched" in message and "\n" not in message
    assert {p: p.read_bytes() for p in before} == before


def test_file_size_limit_is_checked_before_writing(tmp_path):
    """The real RLIMIT_FSIZE, set only around the save (the check refuses before any write)."""
    import resource

    trainer = Trainer(nano("train.steps=2", "train.checkpoint_every=0"), tmp_path)
    trainer.restore_or_init()
    trainer.save()  # step 0
    trainer.state = trainer.state.replace(step=trainer.state.step + 2)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(ckpt.CheckpointError, match=r"file-size limit \(ulimit -f\) is 65,536"):
            trainer.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert ckpt.latest_step(trainer.manager) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["0"]


def test_second_trainer_on_the_same_directory_refuses(tmp_path):
    cfg = nano("train.steps=2", "train.checkpoint_every=0")
    first = Trainer(cfg, tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=r"is in use by another process \(pid \d+"):
        Trainer(cfg, tmp_path)
    first.restore_or_init()
    first.train()  # releases the lock when it returns
    Trainer(cfg, tmp_path)


def _nan_at(trainer: Trainer, bad_step: int) -> None:
    """Make the train step report a NaN loss for optimizer step `bad_step` (1-based)."""
    step_fn = trainer.program.train_step

    def train_step(state, batch, aux):
        new_state, metrics = step_fn(state, batch, aux)
        if int(new_state.step) == bad_step:
            metrics = dict(metrics, loss=jnp.float32(jnp.nan))
        return new_state, metrics

    trainer.program = dataclasses.replace(trainer.program, train_step=train_step)


@pytest.mark.parametrize(
    "every, expected",
    [
        (2, r"non-finite loss/gradient at step 5 \(.*\); last good checkpoint: step 4 in \S+$"),
        (0, r"non-finite loss/gradient at step 5 \(.*\); no checkpoint was saved yet$"),
    ],
)
def test_nan_names_the_step_and_the_last_good_checkpoint(tmp_path, every, expected):
    trainer = Trainer(nano("train.steps=8", f"train.checkpoint_every={every}"), tmp_path)
    trainer.restore_or_init()
    _nan_at(trainer, 5)
    with pytest.raises(TrainingDiverged, match=expected):
        trainer.train()
    # Nothing after the last good checkpoint was saved: the NaN state is not on disk.
    assert ckpt.latest_step(trainer.manager) == (4 if every else None)
    assert np.isfinite(list(losses(tmp_path).values())).all()
