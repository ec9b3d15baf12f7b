"""Weights from one Transformer into another of the same shape, across storages and adapters.

`transfer_weights` copies embeddings, norms (and any other parameter outside the linears: q/k/v
biases) and loads every linear's dense weight into the
target's storage (dense, or quantized at load time: QLoRA); a packed source in the same storage
class keeps its stored arrays bit for bit (codes, scales, 2:4 metadata: never dequantized and
quantized again), and target adapters start from their new base (PiSSA's SVD, DoRA's norms).
Used to build a fine-tuning run from its base and to merge adapters into a dense model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from compactlm.models.config import Frozen
from compactlm.models.linear import iter_linears
from compactlm.models.transformer import Transformer


def unstack_blocks(model: Transformer) -> list[nnx.Module]:
    """The decoder blocks one by one (copies of the slices when the layers are scanned)."""
    if not model.cfg.scan_layers:
        return list(model.layers)
    graphdef, state = nnx.split(model.layers)
    n = model.cfg.n_layers
    return [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state)) for i in range(n)]


def restack_blocks(model: Transformer, blocks: list[nnx.Module]) -> None:
    """Write blocks from `unstack_blocks` back (a no-op for unrolled layers: they are views)."""
    if model.cfg.scan_layers:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
        nnx.update(model.layers, stacked)


def _own_params(block: nnx.Module) -> dict[str, nnx.Param]:
    """A block's parameters outside its linears, by path: norm scales, and whatever a family
    adds beside the linears (Qwen2's q/k/v biases, Qwen3's q/k norms)."""
    linears = [path + "." for path, _ in iter_linears(block)]
    out = {}
    for path, node in nnx.iter_graph(block):
        name = ".".join(str(p) for p in path)
        if isinstance(node, nnx.Param) and not any(name.startswith(lin) for lin in linears):
            out[name] = node
    return out


def transfer_weights(target: Transformer, source: Transformer, *, merge: bool = False) -> None:
    """Write source's weights into target (any storage × adapter): embeddings and norms copied,
    every linear's dense weight (source's adapter folded in when merge=True) loaded into the
    target's storage, target adapters re-initialised from their new base (PiSSA, DoRA)."""
    target.embedding[...] = source.embedding[...].astype(target.embedding[...].dtype)
    target.final_norm.scale[...] = source.final_norm.scale[...]
    pairs: list[tuple[Any, Any]] = []
    if target.lm_head is not None:
        pairs.append((target.lm_head, source.lm_head))
    t_blocks, s_blocks = unstack_blocks(target), unstack_blocks(source)
    for tb, sb in zip(t_blocks, s_blocks, strict=True):
        t_own, s_own = _own_params(tb), _own_params(sb)
        assert t_own.keys() == s_own.keys()
        for name, var in t_own.items():
            var[...] = s_own[name][...].astype(var[...].dtype)
        t_lin, s_lin = list(iter_linears(tb)), list(iter_linears(sb))
        assert [p for p, _ in t_lin] == [p for p, _ in s_lin]
        pairs.extend((t, s) for (_, t), (_, s) in zip(t_lin, s_lin, strict=True))
    for t, s in pairs:
        w = s.adapter.merged_weight(s) if merge and s.adapter is not None else s.dense_weight()
        if is_packed(s) and not (merge and s.adapter is not None) and type(t) is type(s):
            copy_storage(t, s)  # a packed base: its codes as stored (QLoRA on a compressed run)
        else:
            t.load_dense(w)
        if t.adapter is not None:
            t.adapter.init_from_base(t, w)
    restack_blocks(target, t_blocks)


def storage_vars(linear) -> dict[str, Frozen]:
    """A linear's own frozen storage (packed codes, scales, 2:4 metadata; not its adapter's)."""
    return {k: v for k, v in vars(linear).items() if isinstance(v, Frozen)}


def is_packed(linear) -> bool:
    return bool(storage_vars(linear))


def copy_storage(target, source) -> None:
    """target's frozen storage ← source's, bit for bit (same class, names, shapes, dtypes)."""
    src, dst = storage_vars(source), storage_vars(target)
    if src.keys() != dst.keys():
        raise ValueError(f"storage arrays differ: base {sorted(src)}, target {sorted(dst)}")
    for name, var in src.items():
        if (var[...].shape, var[...].dtype) != (dst[name][...].shape, dst[name][...].dtype):
            raise ValueError(
                f"{name}: base {var[...].shape} {var[...].dtype}, target "
                f"{dst[name][...].shape} {dst[name][...].dtype}"
            )
        dst[name][...] = var[...]
