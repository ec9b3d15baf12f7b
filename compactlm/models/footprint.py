"""Parameter counts, FLOPs per token and memory estimates of a ModelConfig (no weights needed)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from compactlm.models.config import QUANTIZED_FORMATS, STORAGE_FORMATS, AdapterConfig
from compactlm.models.transformer import ModelConfig, Transformer

# The weight rows of memory_estimate: dense f32 / bf16, then every packed storage format.
WEIGHT_VARIANTS: tuple[str, ...] = ("float32", "bfloat16", *STORAGE_FORMATS[1:])
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


def block_linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """[K, N] of each block's linear kernels as stored (the fused qkv / gate_up stay fused)."""
    D, H, F = cfg.d_model, cfg.resolved_head_dim, cfg.d_ff
    G = cfg.n_heads // cfg.n_kv_heads
    return {
        "qkv": (D, cfg.n_kv_heads * (G + 2) * H),
        "o": (cfg.n_heads * H, D),
        "gate_up": (D, 2 * F),
        "down": (F, D),
    }


def linear_bytes(cfg: ModelConfig, k: int, n: int) -> int:
    """Bytes of one block linear [K, N] as cfg.weight_format stores it (models/quantized.py, the
    arrays kernels/packing.py defines), exactly:

    dense: K·N at param_dtype. int4 / nf4 / fp4: 4-bit codes in int32 words + f32 scales (+ f32
    zeros with quant_zero_point) per group of quant_group_size rows (0 = K), or for nf4 / fp4
    with double_quant the absmax as int8 codes + one f32 scale per 256 + an f32 mean
    (`packing.bits_per_parameter`, QLoRA §3). sparse24: the kept half at param_dtype + an int32
    of metadata per 32 rows. sparse24_int4: the kept half as int4 codes + f32 scales (+ zeros)
    per group of kept rows (0 = K/2) + the same metadata.
    """
    from compactlm.kernels.packing import bits_per_parameter

    fmt = cfg.weight_format
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    if fmt == "dense":
        return k * n * itemsize
    if fmt in QUANTIZED_FORMATS:
        bits = bits_per_parameter(
            fmt,
            cfg.quant_group_size or k,
            affine=cfg.quant_zero_point and fmt == "int4",
            double_quant=cfg.double_quant and fmt != "int4",
            scale_bits=32,
            shape=(k, n),
        )
        return round(bits * k * n / 8)
    meta = (k // 32) * n * 4
    kept = k // 2
    if fmt == "sparse24":
        return kept * n * itemsize + meta
    if fmt == "sparse24_int4":
        groups = (kept // (cfg.quant_group_size or kept)) * n
        return kept * n // 2 + meta + 4 * groups * (2 if cfg.quant_zero_point else 1)
    raise ValueError(f"unknown storage format {fmt!r}; valid: {', '.join(STORAGE_FORMATS)}")


def weight_bytes(cfg: ModelConfig) -> dict[str, int]:
    """THE storage cost of a model's weights, in bytes (what `compactlm quantize` / `prune`
    write, `info`, `pick`, `report` and the compression report all show; tested equal to the
    exported arrays per format in tests/compress/test_export.py).

    linear: the block linears (`linear_bytes`, every layer); other: embedding, norms and an
    untied lm_head, which every format keeps at param_dtype; adapter: LoRA / DoRA parameters
    (param_dtype); total: all three.
    """
    counts = count_params(cfg)
    itemsize = jnp.dtype(cfg.param_dtype).itemsize
    linear = cfg.n_layers * sum(
        linear_bytes(cfg, k, n) for k, n in block_linear_shapes(cfg).values()
    )
    other = (counts["total"] - counts["linear"]) * itemsize
    adapter = counts["adapter"] * itemsize
    return {"linear": linear, "other": other, "adapter": adapter, "total": linear + other + adapter}


def base_bits_per_param(cfg: ModelConfig) -> float:
    """Storage bits per block-linear weight of cfg.weight_format (`weight_bytes`): 32 for a dense
    f32 base, 4.127 for QLoRA's NF4 at G = 64 with double quantization."""
    return 8 * weight_bytes(cfg)["linear"] / count_params(cfg)["linear"]


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

    weights/<fmt>: `weight_bytes` of cfg stored as <fmt> (float32 / bfloat16: dense at that
      param_dtype; a packed format: its codes and f32 scales at cfg's quant_group_size, or per
      channel where that does not divide the widths, the rest at cfg.param_dtype, as `compactlm
      quantize` / `prune` write it).
    grads, optimizer/<name>: f32 per param (Adam(W): m and v; Lion: one momentum).
    activations/remat=<mode>: per-layer stored activations (see _activation_elems_per_token_layer,
      in the spirit of Korthikanti et al. 2022 §4) × B·T·L in compute dtype, plus one block's
      recompute workspace when remat is on, plus the f32 logits and their gradient (2·B·T·V·4).
    kv_cache/<dtype>: 2·L·B·T·K·H keys and values at context T = seq_len.
    """
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(f"optimizer {optimizer!r}; valid: {', '.join(OPTIMIZER_SLOTS)}")
    counts = count_params(cfg)
    out: dict[str, int] = {}
    plain = dataclasses.replace(cfg, adapter=AdapterConfig())
    for fmt in WEIGHT_VARIANTS:
        if fmt in ("float32", "bfloat16"):
            variant = dataclasses.replace(plain, weight_format="dense", param_dtype=fmt)
        else:
            try:
                variant = dataclasses.replace(plain, weight_format=fmt)
            except ValueError:  # quant_group_size does not divide a width: per channel
                variant = dataclasses.replace(plain, weight_format=fmt, quant_group_size=0)
        out[f"weights/{fmt}"] = weight_bytes(variant)["total"]
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
