"""The train state, its sharded initialisation, and the one jitted train step / eval step.

The model lives as `(graphdef, params, frozen)`: `params` is the trainable filter's state
(`nnx.Param` for full training; `nnx.LoRAParam` for adapters), `frozen` everything else. The step
is a pure function of (state, batch) compiled once with `jax.jit` over those states and merged
back into the NNX module inside the trace (`nnx.merge`), which avoids `nnx.jit`'s per-call
graph traversal: on the 0.8M model a step is a few ms, so Python overhead matters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from compactlm.models.transformer import ModelConfig, Transformer
from compactlm.train.loss import cross_entropy, summed_nll

Filter = Any


@flax.struct.dataclass
class TrainState:
    # int32 scalar: optimizer steps taken (= the data position: batches are f(seed, step))
    step: jax.Array
    params: nnx.State  # trainable
    frozen: nnx.State  # everything else the model holds
    opt_state: optax.OptState
    rng: jax.Array  # uint32[2] raw key data (stochastic regularisers; saved for exact resume)


@dataclasses.dataclass(frozen=True)
class Program:
    """What the loop needs: the static graph, the optimizer, shardings and compiled functions."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    mesh: Mesh
    state_sharding: Any
    batch_sharding: NamedSharding  # [B, T] batches (eval)
    accum_sharding: NamedSharding  # [A, B/A, T+1] train batches: micro-batch axis unsharded
    # train_step(state, tokens [A, B/A, T+1], aux) -> (state, metrics); aux=None without one
    train_step: Callable[[TrainState, jax.Array, Any], tuple[TrainState, dict[str, jax.Array]]]
    eval_step: Callable[[nnx.State, nnx.State, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    trainable: Filter = nnx.Param  # what `params` holds; the rest is `frozen`
    # model_fn(model_cfg, rngs=) builds the module that trains (Transformer, or a subclass
    # carrying training-only parameters: distillation's feature projections).
    model_fn: Callable[..., nnx.Module] = Transformer
    # Top-level parameter key of training-only state that checkpoints keep apart from the model
    # (the module's `checkpoint_extra`; train/checkpoint.py::split_extra); None = none.
    extra_key: str | None = None

    def model(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.frozen)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def _shardings(mesh: Mesh, abstract_state: nnx.State) -> Any:
    specs = nnx.get_partition_spec(abstract_state)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


def abstract_model(
    model_cfg: ModelConfig, seed: int = 0, model_fn: Callable[..., nnx.Module] = Transformer
) -> nnx.Module:
    return nnx.eval_shape(lambda: model_fn(model_cfg, rngs=nnx.Rngs(seed)))


# objective(model, tokens [B, T+1], rng, aux) -> (loss to differentiate, {metric: f32 scalar}).
# `rng` is the step's key (dropout, augmentation noise, on-policy sampling); `aux` is whatever
# pytree the caller passes to every train step (distillation: the frozen teacher's state).
Objective = Callable[[nnx.Module, jax.Array, jax.Array, Any], tuple[jax.Array, dict[str, Any]]]


def lm_objective(z_loss: float = 0.0) -> Objective:
    """Next-token cross-entropy (+ optional PaLM z-loss): pretraining and fine-tuning."""

    def objective(model, tokens_BT1, rng, aux):
        del aux
        logits_BTV = model(tokens_BT1[:, :-1], rng=rng)
        return cross_entropy(logits_BTV, tokens_BT1[:, 1:], z_loss=z_loss)

    return objective


def step_rng(rng_data: jax.Array, step: jax.Array) -> jax.Array:
    """The key of optimizer step `step`: a pure function of (TrainState.rng, step), so a resumed
    run draws exactly the keys the uninterrupted one would have."""
    return jax.random.fold_in(jax.random.wrap_key_data(rng_data), step)


def build(
    model_cfg: ModelConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    trainable: Filter = nnx.Param,
    objective: Objective | None = None,
    aux: Any = None,
    aux_sharding: Any = None,
    z_loss: float = 0.0,
    grad_accum: int = 1,
    batch_sharding: NamedSharding,
    model_fn: Callable[..., nnx.Module] | None = None,
) -> Program:
    """Shapes, shardings and the compiled step functions; no arrays are allocated here.

    trainable: the filter of what trains (`nnx.Param`: everything; `nnx.LoRAParam`: adapters);
    the rest of the model is `frozen` state (never in the optimizer). objective: see `Objective`
    (default `lm_objective(z_loss)`). aux: an example or abstract (ShapeDtypeStruct) pytree of
    what will be passed as `train_step(state, batch, aux)`; aux_sharding its shardings
    (default: replicated). model_fn: see `Program.model_fn` (default: Transformer).
    """
    objective = objective or lm_objective(z_loss)
    model_fn = model_fn or Transformer
    abs_model = abstract_model(model_cfg, model_fn=model_fn)
    graphdef, abs_params, abs_frozen = nnx.split(abs_model, trainable, ...)
    param_sh = _shardings(mesh, abs_params)
    frozen_sh = _shardings(mesh, abs_frozen)
    replicated = NamedSharding(mesh, PartitionSpec())
    abs_opt = jax.eval_shape(tx.init, abs_params)
    # A partitioned optimizer (Muon + AdamW) holds each group's state as a params tree with
    # optax.MaskedNode where the other group's leaves are: those keep their (leafless) node.
    opt_sh = optax.tree_map_params(
        tx,
        lambda leaf, sh: leaf if isinstance(leaf, optax.MaskedNode) else sh,
        abs_opt,
        param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    state_sharding = TrainState(
        step=replicated, params=param_sh, frozen=frozen_sh, opt_state=opt_sh, rng=replicated
    )
    if aux_sharding is None:
        aux_sharding = jax.tree.map(lambda _: replicated, aux)

    def loss_fn(params: nnx.State, frozen: nnx.State, tokens_BT1: jax.Array, rng, aux):
        model = nnx.merge(graphdef, params, frozen)
        return objective(model, tokens_BT1, rng, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, tokens_ABT1: jax.Array, aux: Any = None):
        """tokens [A, B/A, T+1]: A micro-batches whose gradients are averaged (accumulation)."""
        rng = step_rng(state.rng, state.step)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, state.frozen, tokens_ABT1[0], rng, aux)
        else:

            def micro(acc, xs):
                tokens_BT1, i = xs
                key = jax.random.fold_in(rng, i)
                out = grad_fn(state.params, state.frozen, tokens_BT1, key, aux)
                return jax.tree.map(jnp.add, acc, out), None

            # The carry's structure comes from the objective itself: new metrics cannot break it.
            shapes = jax.eval_shape(grad_fn, state.params, state.frozen, tokens_ABT1[0], rng, aux)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            total, _ = jax.lax.scan(micro, zeros, (tokens_ABT1, jnp.arange(grad_accum)))
            (loss, metrics), grads = jax.tree.map(lambda x: x / grad_accum, total)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def eval_step(params, frozen, tokens_BT1, mask_BT):
        model = nnx.merge(graphdef, params, frozen)
        return summed_nll(model(tokens_BT1[:, :-1]), tokens_BT1[:, 1:], mask_BT)

    accum_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))
    jit_train = jax.jit(
        train_step,
        in_shardings=(state_sharding, accum_sharding, aux_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    jit_eval = jax.jit(
        eval_step,
        in_shardings=(param_sh, frozen_sh, batch_sharding, batch_sharding),
        out_shardings=replicated,
    )
    return Program(
        graphdef,
        tx,
        mesh,
        state_sharding,
        batch_sharding,
        accum_sharding,
        jit_train,
        jit_eval,
        trainable,
        model_fn,
        getattr(abs_model, "checkpoint_extra", None),
    )


def init_state(program: Program, model_cfg: ModelConfig, *, seed: int) -> TrainState:
    """Fresh parameters created directly in their shards (never materialised on one device)."""

    def init() -> TrainState:
        return _state_of(program, program.model_fn(model_cfg, rngs=nnx.Rngs(seed)), seed)

    return jax.jit(init, out_shardings=program.state_sharding)()


def _state_of(program: Program, model: nnx.Module, seed: int) -> TrainState:
    _, params, frozen = nnx.split(model, program.trainable, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=program.tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed + 1)),
    )


def state_from_model(program: Program, model: nnx.Module, *, seed: int) -> TrainState:
    """A step-0 TrainState around an existing model (fine-tuning: base weights already loaded),
    placed in the program's shardings."""
    return jax.jit(lambda m: _state_of(program, m, seed), out_shardings=program.state_sharding)(
        model
    )


def abstract_state(program: Program, model_cfg: ModelConfig, *, seed: int):
    """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
    shapes = jax.eval_shape(lambda: init_state(program, model_cfg, seed=seed))
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        program.state_sharding,
    )
