"""Parameter counts, FLOPs per token and memory estimates of a ModelConfig (no weights needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from compactlm.models.config import QUANTIZED_FORMATS, STORAGE_FORMATS
from compactlm.models.transformer import ModelConfig, Transformer

# Served packed formats store their scales in bf16 (what a deployed model keeps; halves f32's).
SERVED_SCALE_BITS = 16


def storage_bits(fmt: str) -> float:
    """Storage bits per weight of a block linear kernel stored as `fmt` (DESIGN §3).

    `fmt`: "float32" / "bfloat16" (dense) or a models/config.py STORAGE_FORMATS name ("dense" =
    bfloat16). int4 / nf4 / fp4: kernels/packing.py's bits_per_parameter at the format's default
    group (int4 128, nf4 / fp4 64) with bf16 scales: 4 + 16/128 = 4.125, 4 + 16/64 = 4.25.
    sparse24: half the values in bf16 (8 bits/weight) + a 4-bit index nibble per group of four
    (1 bit/weight) = 9 = 0.5625 × bf16. sparse24_int4: the kept half as int4 (4.125 / 2) + 1.
    """
    from compactlm.kernels.packing import (
        DEFAULT_GROUP_SIZE,
        SPARSE24_GROUP,
        SPARSE24_KEEP,
        bits_per_parameter,
    )

    meta_bits = 4 / SPARSE24_GROUP  # one nibble (i0 | i1 << 2) per group of four weights
    keep = SPARSE24_KEEP / SPARSE24_GROUP
    if fmt == "float32":
        return 32.0
    if fmt in ("bfloat16", "dense"):
        return 16.0
    if fmt in QUANTIZED_FORMATS:
        return bits_per_parameter(fmt, DEFAULT_GROUP_SIZE[fmt], scale_bits=SERVED_SCALE_BITS)
    if fmt == "sparse24":
        return keep * 16 + meta_bits
    if fmt == "sparse24_int4":
        return keep * storage_bits("int4") + meta_bits
    raise ValueError(
        f"unknown storage format {fmt!r}; valid: float32, bfloat16, {', '.join(STORAGE_FORMATS)}"
    )


# Bits per block-linear weight of every stored variant: dense f32 / bf16, then the packed formats.
KERNEL_BITS: dict[str, float] = {
    fmt: storage_bits(fmt) for fmt in ("float32", "bfloat16", *STORAGE_FORMATS[1:])
}
# Optimizer state in f32 values per parameter.
OPTIMIZER_SLOTS: dict[str, int] = {"adamw": 2, "lion": 1, "sgd": 0}


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Exact counts from the model's abstract init (jax.eval_shape: no memory, no FLOPs).

    embedding: the input table V·D; lm_head: V·D when untied, else 0; non_embedding: the blocks
    and final norm (Kaplan et al. 2020's N); linear: block linear kernels only (what int4 / 2:4
    compress); total: all. These count the model's weights whatever their storage (a packed nf4
    linear counts its K·N weights) and without adapters; adapter: the adapters' parameters
    (what trains under `adapter.kind`).
    """
    import dataclasses

    from compactlm.models.config import AdapterConfig

    dense = dataclasses.replace(cfg, weight_format="dense", adapter=AdapterConfig())
    model = nnx.eval_shape(lambda: Transformer(dense, rngs=nnx.Rngs(0)))
    counts = {"embedding": 0, "lm_head": 0, "non_embedding": 0, "linear": 0}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        size = int(var.get_value().size)
        if path[0] == "embedding":
            counts["embedding"] += size
        elif path[0] == "lm_head":
            counts["lm_head"] += size
        else:
            counts["non_embedding"] += size
            if path[-1] == "kernel":
                counts["linear"] += size
    counts["total"] = counts["embedding"] + counts["lm_head"] + counts["non_embedding"]
    counts["adapter"] = 0
    if cfg.adapter.kind != "none":
        adapted = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        leaves = jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam))
        counts["adapter"] = sum(int(x.size) for x in leaves)
    return counts


def base_bits_per_param(cfg: ModelConfig) -> float:
    """Storage bits per block-linear weight of cfg.weight_format at cfg's group size and double
    quantization (f32 scales, as the packed layers hold them): 4.127 for QLoRA's NF4, G = 64."""
    from compactlm.kernels.packing import bits_per_parameter

    if cfg.weight_format == "dense":
        return float(jnp.dtype(cfg.param_dtype).itemsize * 8)
    if cfg.weight_format not in QUANTIZED_FORMATS:
        return storage_bits(cfg.weight_format)
    H = cfg.resolved_head_dim
    shapes = [
        (cfg.d_model, cfg.n_kv_heads * (cfg.n_heads // cfg.n_kv_heads + 2) * H),
        (cfg.n_heads * H, cfg.d_model),
        (cfg.d_model, 2 * cfg.d_ff),
        (cfg.d_ff, cfg.d_model),
    ]
    dq = cfg.double_quant and cfg.weight_format != "int4"
    bits = sum(
        bits_per_parameter(
            cfg.weight_format, cfg.quant_group_size or k, double_quant=dq, shape=(k, n)
        )
        * k
        * n
        for k, n in shapes
    )
    return bits / sum(k * n for k, n in shapes)


def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Matmul FLOPs per token at context T: training 6N + 12·L·N·H·T, inference 2N + 4·L·N·H·T.

    N = block linear params + V·D (the logit matmul runs whether or not embeddings are tied; the
    embedding lookup is a gather, 0 FLOPs). The attention term counts QKᵀ and AV for every query
    head over all T keys (PaLM, Chowdhery et al. 2022, appendix B; Kaplan et al. 2020 table 1
    has 2·n_layer·n_ctx·d_attn per forward); causal masking would halve it but MFU conventions
    keep the full count. Norms and elementwise ops are ignored (< 1%).
    """
    counts = count_params(cfg)
    n = counts["linear"] + cfg.vocab_size * cfg.d_model
    attn = cfg.n_layers * cfg.n_heads * cfg.resolved_head_dim * seq_len
    return {"train": 6 * n + 12 * attn, "inference": 2 * n + 4 * attn, "n_matmul_params": n}


def _activation_elems_per_token_layer(cfg: ModelConfig, seq_len: int, remat: str) -> float:
    """Activation elements stored per token per layer for the backward pass (rough)."""
    D, F, S = cfg.d_model, cfg.d_ff, seq_len
    NH, KH = cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
    if remat == "block":  # only the block input survives; the rest is recomputed
        return D
    if remat == "dots":  # matmul outputs: q, k, v, o, gate, up, down
        return NH + 2 * KH + D + 2 * F + D
    # none: norm inputs/outputs (4D), q k v + attention output (2NH + 2KH), gate, up, silu(gate),
    # product (4F), and the softmax probabilities N·S of XLA attention (cuDNN flash keeps only N).
    return 4 * D + 2 * NH + 2 * KH + 4 * F + cfg.n_heads * S


def memory_estimate(
    cfg: ModelConfig, *, batch_size: int, seq_len: int, optimizer: str = "adamw"
) -> dict[str, int]:
    """Bytes of training and inference state (rough where noted), keyed "what/variant".

    weights/<fmt>: block linear kernels stored as <fmt> (KERNEL_BITS), embeddings, norms and
      lm_head kept in bf16 (f32 for weights/float32).
    grads, optimizer/<name>: f32 per param (Adam(W): m and v; Lion: one momentum).
    activations/remat=<mode>: per-layer stored activations (see _activation_elems_per_token_layer,
      in the spirit of Korthikanti et al. 2022 §4) × B·T·L in compute dtype, plus one block's
      recompute workspace when remat is on, plus the f32 logits and their gradient (2·B·T·V·4).
    kv_cache/<dtype>: 2·L·B·T·K·H keys and values at context T = seq_len.
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"optimizer {optimizer!r}; valid: {', '.join(OPTIMIZER_SLOTS)}")
    counts = count_params(cfg)
    other = counts["total"] - counts["linear"]
    out: dict[str, int] = {}
    for fmt, bits in KERNEL_BITS.items():
        other_bits = 32 if fmt == "float32" else 16
        out[f"weights/{fmt}"] = int(counts["linear"] * bits / 8 + other * other_bits / 8)
    out["grads/float32"] = 4 * counts["total"]
    out[f"optimizer/{optimizer}"] = 4 * OPTIMIZER_SLOTS[optimizer] * counts["total"]
    act_bytes = jax.numpy.dtype(cfg.compute_dtype).itemsize
    tokens = batch_size * seq_len
    logits = 2 * tokens * cfg.vocab_size * 4
    full_block = _activation_elems_per_token_layer(cfg, seq_len, "none") * tokens * act_bytes
    for mode in ("none", "block", "dots"):
        per_layer = _activation_elems_per_token_layer(cfg, seq_len, mode) * tokens * act_bytes
        workspace = 0 if mode == "none" else full_block
        out[f"activations/remat={mode}"] = int(cfg.n_layers * per_layer + workspace + logits)
    kv_elems = 2 * cfg.n_layers * tokens * cfg.n_kv_heads * cfg.resolved_head_dim
    out["kv_cache/bfloat16"] = 2 * kv_elems
    out["kv_cache/float32"] = 4 * kv_elems
    return out


def format_table(table: dict[str, int]) -> str:
    """Two aligned columns, bytes humanized (KiB / MiB / GiB)."""

    def human(n: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB"):
            if n < 1024 or unit == "GiB":
                return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
            n /= 1024
        raise AssertionError

    width = max(len(k) for k in table)
    return "\n".join(f"{k:<{width}}  {human(v):>10}" for k, v in table.items())
