"""A config's training program, and a run's state restored into it (checkpoint, or base + init).

`make_program` is THE place a config's program is built (the Trainer, saved runs loaded as bases /
teachers / exports, `bench train`, HF import); `restore_state` gives it a state: the latest
readable checkpoint, else a fresh one, from the base's weights when the run fine-tunes one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from compactlm.config import Config, ConfigError
from compactlm.models.transfer import transfer_weights
from compactlm.models.transformer import Transformer
from compactlm.train import checkpoint as ckpt
from compactlm.train.mesh import batch_sharding, make_mesh
from compactlm.train.optim import make_optimizer
from compactlm.train.run_dir import check_base, read_base, read_config
from compactlm.train.step import (
    Program,
    TrainState,
    abstract_state,
    build,
    init_state,
    state_from_model,
)


def trainable_filter(cfg: Config) -> Any:
    """The nnx filter of what trains, from train.trainable and model.adapter.kind."""
    mode = cfg.train.trainable
    if mode == "auto":
        mode = "all" if cfg.model.adapter.kind == "none" else "adapters"
    if mode == "adapters" and cfg.model.adapter.kind == "none":
        raise ConfigError("train.trainable=adapters needs adapter.kind=lora or dora")
    return nnx.LoRAParam if mode == "adapters" else nnx.Param


def config_mesh(cfg: Config) -> Mesh:
    """The mesh cfg.mesh asks for; one that does not fit the devices is the user's mesh.* error."""
    try:
        return make_mesh(cfg.mesh)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_program(cfg: Config, *, mesh: Mesh | None = None, **step_kw: Any) -> Program:
    """THE training program of a config, the one place it is built: the Trainer, saved runs
    loaded as bases / teachers / exports (`program_and_state`), `bench train`, HF import.

    The optimizer (`optim.*`, LoRA+ from the adapter), what trains (`trainable_filter`), z-loss
    and gradient accumulation all come from `cfg`; mesh: default `cfg.mesh` (export / import pass
    one device so a run trained on N devices reads anywhere). step_kw: the objective, aux,
    aux_sharding and model_fn of `train.step.build` (default: next-token cross-entropy, no aux, a
    Transformer).
    """
    mesh = config_mesh(cfg) if mesh is None else mesh
    t = cfg.train
    return build(
        cfg.model,
        make_optimizer(cfg.optim, t.steps, adapter=cfg.model.adapter),
        mesh,
        trainable=trainable_filter(cfg),
        z_loss=t.z_loss,
        grad_accum=t.grad_accum,
        batch_sharding=batch_sharding(mesh),
        **step_kw,
    )


def program_and_state(
    cfg: Config, run_dir: str | Path, *, base: dict | None = None, mesh: Mesh | None = None
) -> tuple[Program, TrainState]:
    """The plain LM program of a saved run and its latest readable checkpoint (no data: a base
    or teacher loaded to serve another corpus, an export); nothing is written in run_dir."""
    program = make_program(cfg, mesh=mesh)
    manager = ckpt.make_manager(run_dir, max_to_keep=cfg.train.keep_checkpoints)
    return program, restore_state(program, cfg, manager, base, require_checkpoint=True)


def adapter_only(program: Program, base: dict | None) -> bool:
    """Adapter-only checkpoints: a fine-tuning run whose base is frozen state."""
    return base is not None and program.trainable is nnx.LoRAParam


def restore_state(
    program: Program,
    cfg: Config,
    manager: Any,
    base: dict | None,
    *,
    require_checkpoint: bool = False,
    move_aside: bool = False,
) -> TrainState:
    """The latest checkpoint's state, or a fresh one (from the base's weights when fine-tuning).

    An unreadable latest checkpoint falls back to the newest readable one
    (`checkpoint.restore_latest`; move_aside: move the unreadable ones out of the way).

    Adapter-only checkpoints store no frozen state: it is rebuilt from the base (checked against
    its recorded fingerprint), exactly as at the run's start.
    """
    seed = cfg.train.seed
    latest = ckpt.latest_step(manager)
    if require_checkpoint and latest is None:
        raise ckpt.CheckpointError(f"no checkpoint found in {manager.directory}")
    if latest is None:
        if base is None:
            return init_state(program, cfg.model, seed=seed)
        return state_from_model(program, build_from_base(cfg, base, seed=seed), seed=seed)
    target = abstract_state(program, cfg.model, seed=seed)
    model = dataclasses.asdict(cfg.model)
    if not adapter_only(program, base):
        return ckpt.restore_latest(
            manager, target, move_aside=move_aside, model=model, extra_key=program.extra_key
        )[0]
    target = target.replace(frozen=None)
    state = ckpt.restore_latest(manager, target, move_aside=move_aside, model=model)[0]
    _, _, frozen = nnx.split(build_from_base(cfg, base, seed=seed), program.trainable, ...)
    return state.replace(frozen=jax.device_put(frozen, program.state_sharding.frozen))


def build_from_base(cfg: Config, ref: dict, *, seed: int) -> Transformer:
    """A model of `cfg.model` holding the recorded base's weights (adapters freshly initialised)."""
    check_base(ref)
    _, base = load_model(ref["run_dir"])
    model = Transformer(cfg.model, rngs=nnx.Rngs(seed))
    transfer_weights(model, base)
    return model


def load_model(run_dir: str | Path) -> tuple[Any, nnx.Module]:
    """(config, model) of a run's latest checkpoint without preparing its data (a base or a
    teacher for another corpus); fine-tuning runs come with their base rebuilt."""
    cfg = read_config(run_dir)
    program, state = program_and_state(cfg, run_dir, base=read_base(run_dir))
    return cfg, program.model(state)
