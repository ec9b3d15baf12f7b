"""The (data, fsdp, tensor) mesh on the 8 forced host devices: shapes, errors, batch shards."""

import numpy as np
import pytest

from compactlm.train.mesh import (
    MeshConfig,
    batch_divisor,
    batch_sharding,
    make_mesh,
    mesh_shape,
    shard_batch,
)


@pytest.mark.parametrize(
    "kwargs, n, expected",
    [
        ({}, 8, (8, 1, 1)),  # data = -1 fills the devices
        ({"fsdp": 2, "tensor": 2}, 8, (2, 2, 2)),
        ({"data": 1, "fsdp": 8}, 8, (1, 8, 1)),
        ({"tensor": 4}, 4, (1, 1, 4)),
    ],
)
def test_mesh_shape(kwargs, n, expected):
    shape = mesh_shape(MeshConfig(**kwargs), n)
    assert shape == expected and np.prod(shape) == n


@pytest.mark.parametrize(
    "kwargs, n", [({"tensor": 3}, 8), ({"data": 2, "fsdp": 2}, 8), ({"fsdp": 16}, 8)]
)
def test_mesh_that_does_not_fit_the_devices_says_so(kwargs, n):
    with pytest.raises(ValueError, match=f"does not match {n} devices"):
        mesh_shape(MeshConfig(**kwargs), n)


@pytest.mark.parametrize("kwargs", [{"fsdp": 0}, {"tensor": 0}, {"data": 0}, {"devices": -1}])
def test_bad_mesh_config_is_refused(kwargs):
    with pytest.raises(ValueError, match="mesh"):
        MeshConfig(**kwargs)


def test_devices_limits_the_mesh():
    mesh = make_mesh(MeshConfig(devices=2))
    assert mesh.devices.size == 2 and dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="mesh.devices=99 but only 8"):
        make_mesh(MeshConfig(devices=99))


def test_batch_is_split_over_data_and_fsdp_and_reassembles_exactly():
    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2))  # data 2 x fsdp 2 x tensor 2
    assert batch_divisor(mesh) == 4
    batch = np.arange(8 * 5, dtype=np.int32).reshape(8, 5)
    sharded = shard_batch(batch, batch_sharding(mesh))
    np.testing.assert_array_equal(np.asarray(sharded), batch)
    rows = {tuple(np.asarray(s.data)[:, 0]) for s in sharded.addressable_shards}
    # 4 distinct row blocks of 2 (data x fsdp), each replicated over the 2 tensor devices.
    assert len(rows) == 4 and all(len(r) == 2 for r in rows)
    assert len(sharded.addressable_shards) == 8
