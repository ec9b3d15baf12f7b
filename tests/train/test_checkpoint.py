"""train/checkpoint.py on small pytrees (no model, no training): bit-equal round trip into a
requested sharding, retention, the errors' wording, the content digest, the shape check and the
run lock. Fault paths through a real run (kill -9, disk full, corrupt latest) are
tests/train/test_faults.py."""

import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from compactlm.train import checkpoint as ckpt
from compactlm.train.config import MeshConfig
from compactlm.train.mesh import make_mesh


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "step": jnp.int32(7 + seed),
        "w": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        "h": jnp.asarray(rng.normal(size=(16,)), jnp.bfloat16),
        "codes": jnp.asarray(rng.integers(-(2**31), 2**31 - 1, size=(4, 4)), jnp.int32),
    }


def _abstract(state: dict, sharding=None) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def test_round_trip_is_bit_equal_and_lands_in_the_requested_sharding(tmp_path):
    manager = ckpt.make_manager(tmp_path)
    state = _state()
    meta, config = {"step": 7, "metrics": {"loss": 1.5}}, {"model": {"d_model": 8}}
    assert ckpt.save(manager, 7, state, meta, config) is True
    assert ckpt.save(manager, 7, state, meta, config) is False  # that step exists: skipped
    mesh = make_mesh(MeshConfig(data=1, fsdp=8))
    target = _abstract(state, NamedSharding(mesh, PartitionSpec()))
    target["w"] = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=NamedSharding(
        mesh, PartitionSpec("fsdp", None)))  # fmt: skip
    restored, got_meta, got_config = ckpt.restore(ckpt.make_manager(tmp_path), target)
    for name, x in state.items():
        y = restored[name]
        assert y.dtype == x.dtype and y.shape == x.shape
        bits = lambda a: np.atleast_1d(np.asarray(a)).view(np.uint8)  # noqa: E731  (bf16 too)
        np.testing.assert_array_equal(bits(y), bits(x))
    assert restored["w"].sharding.spec == PartitionSpec("fsdp", None)
    assert {s.data.shape for s in restored["w"].addressable_shards} == {(1, 4)}
    assert (got_meta, got_config) == (meta, config)


def test_only_the_newest_max_to_keep_are_kept_and_missing_steps_are_named(tmp_path):
    manager = ckpt.make_manager(tmp_path, max_to_keep=2)
    for step in (1, 2, 3, 4):
        ckpt.save(manager, step, _state(step), {"step": step}, {})
    assert sorted(manager.all_steps()) == [3, 4] and ckpt.latest_step(manager) == 4
    # Each step's digest lives in its directory and is deleted with it.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]
    assert all((tmp_path / "checkpoints" / s / ckpt.DIGEST_FILE).is_file() for s in ("3", "4"))
    restored, meta, _ = ckpt.restore(manager, _abstract(_state()), 3)
    assert int(restored["step"]) == 10 and meta == {"step": 3}
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint for step 1 .*\[3, 4\]"):
        ckpt.restore(manager, _abstract(_state()), 1)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.restore(ckpt.make_manager(tmp_path / "empty"), _abstract(_state()))


def _step_files(step_dir) -> dict[str, bytes]:
    return {
        p.relative_to(step_dir).as_posix(): p.read_bytes()
        for p in step_dir.rglob("*")
        if p.is_file() and p.name != ckpt.DIGEST_FILE
    }


def test_a_byte_changed_after_the_save_is_refused_naming_step_and_file(tmp_path):
    manager = ckpt.make_manager(tmp_path)
    for step in (1, 2):
        ckpt.save(manager, step, _state(step), {"step": step}, {})
    step_dir = tmp_path / "checkpoints" / "2"
    recorded = json.loads((step_dir / ckpt.DIGEST_FILE).read_text())["sha256"]
    files = _step_files(step_dir)
    assert recorded == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert any(rel.startswith("state/") for rel in recorded)

    # One bit, size kept, in the largest file of the state item (its array data).
    rel = max((r for r in files if r.startswith("state/")), key=lambda r: len(files[r]))
    data = bytearray(files[rel])
    data[len(data) // 2] ^= 0x01
    (step_dir / rel).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.restore(manager, _abstract(_state()), 2)
    message = str(e.value)
    assert f"checkpoint step 2 in {tmp_path / 'checkpoints'} could not be restored" in message
    assert f"(file {rel} differs from its sha256 in digest.json)" in message
    assert "left untouched: [1]" in message and "\n" not in message

    warnings: list[str] = []
    restored, meta, _ = ckpt.restore_latest(
        manager, _abstract(_state()), move_aside=False, warn=warnings.append
    )
    assert meta == {"step": 1} and int(restored["step"]) == 8
    assert f"file {rel} differs" in warnings[0]
    assert warnings[-1] == "resuming from checkpoint step 1"

    # A damaged digest cannot vouch for anything: the step is refused too, and with no other
    # step left the error names the step and why, on one line.
    (tmp_path / "checkpoints" / "1" / ckpt.DIGEST_FILE).write_text('{"sha256": ')
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.restore_latest(manager, _abstract(_state()), move_aside=True)
    message = str(e.value)
    assert message.startswith("no readable checkpoint") and "steps [2, 1]" in message
    assert "step 2: checkpoint step 2 in" in message and f"(file {rel} differs" in message
    assert "\n" not in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    with pytest.raises(ckpt.CheckpointError, match=r"\(its digest.json is unreadable: "):
        ckpt.restore(manager, _abstract(_state()), 1)


def test_a_step_without_digest_loads_unverified(tmp_path):
    """Saved before digests existed, or killed after orbax's commit and before the digest (or
    mid-write: a stray tmp file): restored as it is, bit-equal when intact."""
    manager = ckpt.make_manager(tmp_path)
    ckpt.save(manager, 3, _state(), {"step": 3}, {})
    step_dir = tmp_path / "checkpoints" / "3"
    os.replace(step_dir / ckpt.DIGEST_FILE, step_dir / f"{ckpt.DIGEST_FILE}.tmp")
    warnings: list[str] = []
    restored, meta, _ = ckpt.restore_latest(
        ckpt.make_manager(tmp_path), _abstract(_state()), move_aside=True, warn=warnings.append
    )
    assert meta == {"step": 3} and warnings == []
    for name, x in _state().items():
        assert np.asarray(restored[name]).tobytes() == np.asarray(x).tobytes()


def test_a_checkpoint_of_another_shape_is_refused_naming_the_fields(tmp_path):
    manager = ckpt.make_manager(tmp_path)
    ckpt.save(manager, 1, _state(), {}, {"model": {"d_model": 8, "n_layers": 2, "vocab_size": 64}})
    ckpt.check_model_matches(manager, 1, {"d_model": 8, "n_layers": 2, "vocab_size": 64})
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.check_model_matches(manager, 1, {"d_model": 16, "n_layers": 2, "vocab_size": 32})
    assert "model.d_model: checkpoint 8, now 16" in str(e.value)
    assert "model.vocab_size: checkpoint 64, now 32" in str(e.value)
    assert "n_layers" not in str(e.value)


def test_the_run_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    first = ckpt.RunLock(tmp_path).acquire()
    # flock locks belong to an open file description: a second open in this process contends
    with pytest.raises(ckpt.CheckpointError, match=r"in use by another process \(pid \d+ on "):
        ckpt.RunLock(tmp_path).acquire()
    first.release()
    ckpt.RunLock(tmp_path).acquire().release()  # free again once released
