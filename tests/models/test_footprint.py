"""Footprint tests: exact parameter counts, FLOPs formula, memory table consistency."""

import dataclasses

import jax
import numpy as np
import pytest
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
    assert table["weights/bfloat16"] == 2 * total
    # f32 params: 2:4 keeps half the values in f32 + 1 bit of metadata per weight (17 of 32 bits)
    assert table["weights/sparse24_int4"] < table["weights/int4"] < table["weights/bfloat16"]
    assert table["weights/bfloat16"] < table["weights/sparse24"] < table["weights/float32"]
    assert table["optimizer/adamw"] == 8 * total
    assert table["kv_cache/bfloat16"] == 2 * (2 * 2 * 2 * 16 * 2 * 8)
    acts = [table[f"activations/remat={m}"] for m in ("block", "dots", "none")]
    assert acts == sorted(acts)


STORAGE_VARIANTS = [
    dict(weight_format="dense"),
    dict(weight_format="dense", param_dtype="bfloat16"),
    dict(weight_format="int4", quant_group_size=32),
    dict(weight_format="int4", quant_group_size=0, quant_zero_point=True),
    dict(weight_format="nf4", quant_group_size=64, double_quant=False),
    dict(weight_format="nf4", quant_group_size=32),  # double quantization (the default)
    dict(weight_format="fp4", quant_group_size=64),
    dict(weight_format="sparse24"),
    dict(weight_format="sparse24", param_dtype="bfloat16"),
    dict(weight_format="sparse24_int4", quant_group_size=0),
    dict(weight_format="sparse24_int4", quant_group_size=32, quant_zero_point=True),
]


@pytest.mark.parametrize("variant", STORAGE_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_weight_bytes_are_the_models_arrays(variant):
    """The one storage-cost formula against the nbytes of every array the model holds in that
    storage (models/quantized.py: codes, scales, zeros, double-quant constants, 2:4 metadata)."""
    from compactlm.models.footprint import block_linear_shapes, weight_bytes

    cfg = dataclasses.replace(SMALL, d_model=64, d_ff=128, tie_embeddings=False, **variant)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    sizes = {"linear": 0, "other": 0}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        value = var.get_value()
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        sizes["linear" if len(path) > 1 and path[-2] in LINEAR_NAMES else "other"] += nbytes
    predicted = weight_bytes(cfg)
    assert predicted["linear"] == sizes["linear"] and predicted["other"] == sizes["other"]
    assert predicted["total"] == sizes["linear"] + sizes["other"]
    kernels = {
        path[-2]: var.get_value().shape[-2:]
        for path, var in nnx.to_flat_state(nnx.state(model))
        if path[-1] == "kernel" and path[-2] in LINEAR_NAMES
    }
    if cfg.weight_format == "dense":  # the formula's shapes are the model's [K, N]
        assert {LINEAR_NAMES[k]: v for k, v in kernels.items()} == block_linear_shapes(cfg)


LINEAR_NAMES = {"qkv_proj": "qkv", "o_proj": "o", "gate_up_proj": "gate_up", "down_proj": "down"}


def test_packed_bits_match_the_storage_contract_by_hand():
    """Closed forms from DESIGN §3 written out here: int4 at G=32 with f32 scales is
    4 + 32/32 = 5 bits; 2:4 f32 values + a nibble per 4 rows is 16 + 1 = 17 bits."""
    from compactlm.models.footprint import base_bits_per_param

    int4 = dataclasses.replace(SMALL, weight_format="int4", quant_group_size=32)
    assert base_bits_per_param(int4) == 4 + 32 / 32
    sparse = dataclasses.replace(SMALL, weight_format="sparse24", quant_group_size=32)
    assert base_bits_per_param(sparse) == 17
    assert base_bits_per_param(SMALL) == 32


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
