"""The device mesh (data, fsdp, tensor), batch shardings and multi-host start-up (jax.sharding)."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from compactlm.train.config import MeshConfig

AXES = ("data", "fsdp", "tensor")


def maybe_initialize_distributed(cfg: MeshConfig) -> None:
    """Start jax.distributed once, before any other JAX call, when the config asks for it."""
    if not cfg.distributed:
        return
    kwargs = {}
    if cfg.coordinator_address:
        kwargs["coordinator_address"] = cfg.coordinator_address
    if cfg.num_processes:
        kwargs["num_processes"] = cfg.num_processes
    if cfg.process_id >= 0:
        kwargs["process_id"] = cfg.process_id
    jax.distributed.initialize(**kwargs)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    inner = cfg.fsdp * cfg.tensor
    data = n_devices // inner if cfg.data == -1 else cfg.data
    if data < 1 or data * inner != n_devices:
        raise ValueError(
            f"mesh data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor} does not match "
            f"{n_devices} devices: data * fsdp * tensor must equal the device count "
            "(use mesh.data=-1 to fill)"
        )
    return data, cfg.fsdp, cfg.tensor


def make_mesh(cfg: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh; jax.make_mesh places devices topology-aware on GPU/TPU."""
    devices = list(jax.devices() if devices is None else devices)
    if cfg.devices:
        if cfg.devices > len(devices):
            raise ValueError(f"mesh.devices={cfg.devices} but only {len(devices)} are available")
        devices = devices[: cfg.devices]
    shape = mesh_shape(cfg, len(devices))
    # Auto axes: shardings propagate through jit (GSPMD) from the annotated params and batches.
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches [B, T] split over every data-like axis (data and fsdp), replicated over tensor."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None))


def batch_divisor(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in ("data", "fsdp"))


def shard_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global host batch → a sharded jax.Array; each process contributes only its own shards.

    Every process computes the same global batch (batches are a pure function of seed and step),
    so multi-host needs no data exchange: each device takes its slice of it.
    """
    return jax.make_array_from_callback(batch.shape, sharding, lambda idx: batch[idx])
