"""THE extension point: `make_linear(layout, ...)` builds every linear: storage × adapter.

Storage (`model.weight_format`): dense (`models/dense.py::Linear`) or packed 4-bit
(`models/quantized.py::QuantizedLinear`); the adapter (`adapter.kind`): none, lora or dora
(`models/lora.py::Adapter`), placed on the parts that `adapter.targets` / `adapter.target_regex`
select. A linear keeps its parameter path whatever wraps it (`attn.qkv_proj.kernel`, adapters
under `attn.qkv_proj.adapter`), so a dense checkpoint's weights map onto any variant.

Fused projections have a `Layout`: the named column views that adapters, export and
calibration use instead of re-deriving column indices.
  qkv  [D, K·(G+2)·H], column (k, j, h): query head n = k·G + j for j < G, key j = G, value j = G+1
       → q [.., N·H] (head order n = k·G + j, HF Llama's q_proj), k [.., K·H], v [.., K·H]
  gate_up [D, 2F] → gate = columns [0, F), up = [F, 2F)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax.numpy as jnp
from flax import nnx

from compactlm.models.config import QUANTIZED_FORMATS, SPARSE_FORMATS, STORAGE_FORMATS
from compactlm.models.dense import Linear, StorageLinear
from compactlm.models.lora import Adapter
from compactlm.models.quantized import QuantizedLinear, Sparse24Linear

if TYPE_CHECKING:
    from compactlm.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Layout:
    """Named views of the last axis of a linear's output (or of its kernel's columns).

    kind "single": one part; "qkv": grouped per kv head (module docstring); "halves": two
    contiguous halves. split / join work on any array whose last axis is the output axis, so
    the same views serve activations y [..., O] and kernels W [I, O].
    """

    kind: str
    names: tuple[str, ...]
    widths: tuple[int, ...] = ()  # single / halves: each part's width
    n_kv_heads: int = 0  # qkv: K
    group: int = 0  # qkv: G = N / K query heads per kv head
    head_dim: int = 0  # qkv: H

    def sizes(self) -> dict[str, int]:
        """Each part's number of output columns."""
        if self.kind == "qkv":
            kh = self.n_kv_heads * self.head_dim
            return {"q": kh * self.group, "k": kh, "v": kh}
        return dict(zip(self.names, self.widths, strict=True))

    def split(self, y) -> dict:
        if self.kind == "single":
            return {self.names[0]: y}
        if self.kind == "halves":
            a, b = jnp.split(y, 2, axis=-1)
            return dict(zip(self.names, (a, b), strict=True))
        K, G, H = self.n_kv_heads, self.group, self.head_dim
        y5 = y.reshape(*y.shape[:-1], K, G + 2, H)
        lead = y.shape[:-1]
        return {
            "q": y5[..., :G, :].reshape(*lead, K * G * H),
            "k": y5[..., G, :].reshape(*lead, K * H),
            "v": y5[..., G + 1, :].reshape(*lead, K * H),
        }

    def join(self, parts: dict):
        if self.kind == "single":
            return parts[self.names[0]]
        if self.kind == "halves":
            return jnp.concatenate([parts[n] for n in self.names], axis=-1)
        K, G, H = self.n_kv_heads, self.group, self.head_dim
        lead = parts["q"].shape[:-1]
        q = parts["q"].reshape(*lead, K, G, H)
        k = parts["k"].reshape(*lead, K, 1, H)
        v = parts["v"].reshape(*lead, K, 1, H)
        dtype = jnp.result_type(q, k, v)
        joined = jnp.concatenate([q.astype(dtype), k.astype(dtype), v.astype(dtype)], axis=-2)
        return joined.reshape(*lead, K * (G + 2) * H)

    # Kernel columns are the same views: W [I, O] has its output axis last.
    split_columns = split
    join_columns = join


def single(name: str, out_features: int) -> Layout:
    return Layout("single", (name,), (out_features,))


def qkv_layout(n_heads: int, n_kv_heads: int, head_dim: int) -> Layout:
    G = n_heads // n_kv_heads
    return Layout("qkv", ("q", "k", "v"), n_kv_heads=n_kv_heads, group=G, head_dim=head_dim)


def halves(first: str, second: str, width: int) -> Layout:
    return Layout("halves", (first, second), (width, width))


def make_linear(
    layout: Layout,
    in_features: int,
    *,
    cfg: ModelConfig,
    rngs: nnx.Rngs,
    kernel_axes: tuple[str | None, str | None],
    path: str,
    init_std: float | None = None,
    out_dtype: str | None = None,
    storage: str | None = None,
) -> StorageLinear:
    """THE factory for every linear layer: storage from `cfg.weight_format` (or `storage`), an
    adapter on the parts of `layout` that `cfg.adapter` targets.

    path: the module path of the linear's parts without the part name (`layers.3.attn`,
    `layers.*.attn` under scanned layers; "" for the LM head, whose part is `lm_head`); each
    part's full path (`layers.3.attn.q`) is what `adapter.target_regex` matches.
    kernel_axes names the mesh axes of the kernel [in, out]; init_std defaults to cfg.init_std;
    out_dtype defaults to cfg.compute_dtype (the LM head asks for float32 logits).
    """
    fmt = storage or cfg.weight_format
    out_features = sum(layout.sizes().values())
    common = dict(
        compute_dtype=jnp.dtype(cfg.compute_dtype),
        out_dtype=jnp.dtype(out_dtype or cfg.compute_dtype),
        init_std=cfg.init_std if init_std is None else init_std,
        kernel_axes=kernel_axes,
        rngs=rngs,
        layout=layout,
    )
    if fmt == "dense":
        linear = Linear(in_features, out_features, param_dtype=jnp.dtype(cfg.param_dtype), **common)
    elif fmt in QUANTIZED_FORMATS:
        linear = QuantizedLinear(
            in_features,
            out_features,
            format=fmt,
            group_size=cfg.quant_group_size,
            double_quant=cfg.double_quant,
            zero_point=cfg.quant_zero_point,
            **common,
        )
    elif fmt in SPARSE_FORMATS:
        # Produced by `compactlm prune` from a trained run; from scratch: checkpoint shapes.
        linear = Sparse24Linear(
            in_features,
            out_features,
            quantized=fmt == "sparse24_int4",
            group_size=cfg.quant_group_size,
            zero_point=cfg.quant_zero_point,
            param_dtype=jnp.dtype(cfg.param_dtype),
            **common,
        )
    else:
        valid = ", ".join(STORAGE_FORMATS)
        raise ValueError(f"unknown weight_format {fmt!r}; valid formats: {valid}")
    prefix = f"{path}." if path else ""
    parts = tuple(p for p in layout.names if cfg.adapter.targets_path(prefix + p))
    if parts:
        linear.adapter = Adapter(
            linear,
            parts,
            cfg.adapter,
            rngs=rngs,
            param_dtype=jnp.dtype(cfg.param_dtype),
            in_axis=kernel_axes[0],
            out_axis=kernel_axes[1],
        )
    return linear


def iter_linears(module: nnx.Module) -> Iterator[tuple[str, StorageLinear]]:
    """(dotted path, linear) for every linear under `module`, in graph order."""
    for path, node in nnx.iter_graph(module):
        if isinstance(node, StorageLinear):
            yield ".".join(str(p) for p in path), node
