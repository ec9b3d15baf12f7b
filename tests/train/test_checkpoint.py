"""train/checkpoint.py on small pytrees (no model, no training): bit-equal round trip into a
requested sharding, retention, the errors' wording, the shape check and the run lock. Fault
paths through a real run (kill -9, disk full, corrupt latest) are tests/train/test_faults.py."""

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
    restored, meta, _ = ckpt.restore(manager, _abstract(_state()), 3)
    assert int(restored["step"]) == 10 and meta == {"step": 3}
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint for step 1 .*\[3, 4\]"):
        ckpt.restore(manager, _abstract(_state()), 1)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.restore(ckpt.make_manager(tmp_path / "empty"), _abstract(_state()))


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
