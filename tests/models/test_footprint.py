"""Footprint tests: exact parameter counts, FLOPs formula, memory table consistency."""

import dataclasses

import jax
from flax import nnx

from compactlm.models.footprint import count_params, flops_per_token, memory_estimate
from compactlm.models.transformer import ModelConfig, Transformer

SMALL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)


def _actual(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_count_params_matches_model():
    for cfg in (SMALL, dataclasses.replace(SMALL, tie_embeddings=False, scan_layers=False)):
        counts = count_params(cfg)
        assert counts["total"] == _actual(Transformer(cfg, rngs=nnx.Rngs(0)))
        assert counts["embedding"] == 64 * 32
        assert counts["lm_head"] == (0 if cfg.tie_embeddings else 64 * 32)


def test_count_params_closed_form():
    D, F, L, V = 32, 64, 2, 64
    NH, KH = 4 * 8, 2 * 8
    linear = L * (D * NH + 2 * D * KH + NH * D + 3 * D * F)
    counts = count_params(SMALL)
    assert counts["linear"] == linear
    assert counts["total"] == V * D + linear + (2 * L + 1) * D  # + norm scales


def test_default_is_tiny_shape():
    # tiny: V=320, D=128, L=4, N=4 and K=2 heads of H=32, F=384, tied embeddings. Per layer:
    # q and o are D·N·H each, k and v D·K·H each, gate/up/down 3·D·F, two norms 2·D; then the
    # embedding V·D and the final norm D.
    V, D, L, N, K, H, F = 320, 128, 4, 4, 2, 32, 384
    per_layer = 2 * D * N * H + 2 * D * K * H + 3 * D * F + 2 * D
    assert count_params(ModelConfig())["total"] == V * D + L * per_layer + D == 828_544


def test_flops_per_token():
    f = flops_per_token(SMALL, seq_len=16)
    n = count_params(SMALL)["linear"] + 64 * 32
    attn = 2 * 4 * 8 * 16
    assert f == {"train": 6 * n + 12 * attn, "inference": 2 * n + 4 * attn, "n_matmul_params": n}


def test_memory_estimate_rows():
    table = memory_estimate(SMALL, batch_size=2, seq_len=16)
    total = count_params(SMALL)["total"]
    assert table["weights/float32"] == 4 * total
    assert table["weights/int4"] < table["weights/sparse24_int4"] * 2
    assert table["weights/sparse24_int4"] < table["weights/int4"] < table["weights/sparse24"]
    assert table["weights/sparse24"] < table["weights/bfloat16"]
    assert table["optimizer/adamw"] == 8 * total
    assert table["kv_cache/bfloat16"] == 2 * (2 * 2 * 2 * 16 * 2 * 8)
    acts = [table[f"activations/remat={m}"] for m in ("block", "dots", "none")]
    assert acts == sorted(acts)


def test_storage_bits_are_the_packed_arrays_bytes():
    """storage_bits(fmt) against the nbytes of weights actually packed by kernels/packing.py
    (bf16 scales, each format's default group): the formula and the storage contract agree."""
    import jax.numpy as jnp
    import numpy as np

    from compactlm.kernels import packing
    from compactlm.models.footprint import KERNEL_BITS, storage_bits

    k, n = 256, 64
    w = jnp.asarray(np.random.default_rng(0).normal(size=(k, n)), jnp.float32)
    w24 = w * packing.mask_24_magnitude(w)
    packed = {
        "int4": packing.quantize(w, "int4", scale_dtype=jnp.bfloat16),
        "nf4": packing.quantize(w, "nf4", scale_dtype=jnp.bfloat16),
        "fp4": packing.quantize(w, "fp4", scale_dtype=jnp.bfloat16),
        "sparse24": packing.compress_24(w24.astype(jnp.bfloat16)),
        "sparse24_int4": packing.quantize_sparse24_int4(w24, scale_dtype=jnp.bfloat16),
    }
    for fmt, arrays in packed.items():
        nbytes = sum(a.nbytes for a in arrays if a is not None)
        assert storage_bits(fmt) == KERNEL_BITS[fmt] == nbytes * 8 / (k * n), fmt
    assert storage_bits("dense") == storage_bits("bfloat16") == 16 and KERNEL_BITS["float32"] == 32


def test_packed_and_adapted_models_count_the_same_weights_plus_adapters():
    import dataclasses

    from compactlm.models.config import AdapterConfig
    from compactlm.models.footprint import base_bits_per_param

    adapted = dataclasses.replace(
        SMALL, weight_format="nf4", quant_group_size=32, adapter=AdapterConfig(kind="lora", rank=2)
    )
    dense, qlora = count_params(SMALL), count_params(adapted)
    assert dense["adapter"] == 0
    assert all(qlora[k] == dense[k] for k in dense if k != "adapter")
    D, N, K = SMALL.d_model, SMALL.n_heads, SMALL.n_kv_heads
    H = SMALL.resolved_head_dim
    assert qlora["adapter"] == SMALL.n_layers * 2 * ((D + N * H) + (D + K * H))  # q, v at r=2
    # QLoRA §3: NF4 at block 64 with double quantization costs 4 + 8/64 + 32/(64·256) bits
    big = dataclasses.replace(
        SMALL, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=11008, weight_format="nf4"
    )
    assert abs(base_bits_per_param(big) - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-3
