"""compress/export.py: the packed model (kernels' storage) computes the fake-quantized model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.compress import apply as A
from compactlm.compress import calibrate as C
from compactlm.compress import export as E
from compactlm.compress.prune import PruneConfig
from compactlm.compress.quantize import QuantConfig
from compactlm.kernels import packing as P
from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer
from tests.tolerances import tol

CFG = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=32)


def _nbytes(model) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(nnx.state(model)))


@pytest.mark.parametrize(
    "prune_cfg, quant, scan",
    [
        (None, QuantConfig(method="rtn", format="int4_affine", bits=3, group_size=0), True),
        (None, QuantConfig(method="rtn", format="nf4", group_size=64), False),
        (PruneConfig(method="magnitude", pattern="2:4"), None, True),
        (PruneConfig(method="magnitude", pattern="2:4"), QuantConfig(group_size=32), False),
    ],
)
def test_exported_model_computes_the_compressed_weights(prune_cfg, quant, scan):
    cfg = ModelConfig(**CFG, scan_layers=scan)
    source = Transformer(cfg, rngs=nnx.Rngs(0))
    results = A.apply_compression(source, prune_cfg=prune_cfg, quant=quant, log=lambda *_: None)
    fmt = E.storage_format(prune_cfg, quant)
    arrays = {k: E.packed_arrays(r, fmt, np.float32) for k, r in results.items()}
    packed = Transformer(E.compressed_model_config(cfg, fmt, quant), rngs=nnx.Rngs(1))
    E.load_compressed(packed, source, arrays)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 16)))
    np.testing.assert_allclose(packed(tokens), source(tokens), **tol("model_f32"))
    sizes = E.size_report(results, cfg, fmt, quant)
    # The one storage-cost formula is what the export holds: every array of the packed model
    # (what write_run saves), codes, scales, metadata, embedding and norms alike.
    assert sizes["model_bytes"] == _nbytes(packed)
    assert sizes["dense_model_bytes"] == _nbytes(source)
    expected = {"int4": 4.0, "nf4": 4.0, "fp4": 4.0, "sparse24": 17.0, "sparse24_int4": 3.0}
    if fmt in expected:  # codes (+ metadata) without the per-group scales
        assert expected[fmt] <= sizes["linear_bits_per_weight"] < expected[fmt] + 1.1


def _double_quantize_reference(c: np.ndarray, block: int = 256):
    """QLoRA §3 from its definition, in NumPy: the absmax constants c (> 0) centred on their
    mean, then symmetric int8 absmax quantization in flat row-major blocks of 256."""
    mean = np.float32(c.mean(dtype=np.float32))
    flat = (c - mean).reshape(-1)
    blocks = np.pad(flat, (0, -flat.size % block)).reshape(-1, block)
    scale = np.abs(blocks).max(axis=1) / np.float32(127)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    codes = np.clip(np.round(blocks / scale[:, None]), -127, 127).astype(np.int8)
    codes = codes.reshape(-1)[: flat.size].reshape(c.shape)
    back = codes.astype(np.float32) * np.repeat(scale, block)[: flat.size].reshape(c.shape) + mean
    return codes, scale, mean, back


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_double_quantized_export_matches_the_definition(fmt):
    cfg = ModelConfig(**CFG, scan_layers=False)
    source = Transformer(cfg, rngs=nnx.Rngs(0))
    quant = QuantConfig(method="rtn", format=fmt, group_size=32, double_quant=True)
    single = dataclasses.replace(quant, double_quant=False)
    results = A.apply_compression(source, quant=quant, log=lambda *_: None)
    dq = {k: E.packed_arrays(r, fmt, np.float32, dq=True) for k, r in results.items()}
    sq = {k: E.packed_arrays(r, fmt, np.float32) for k, r in results.items()}
    packed = Transformer(E.compressed_model_config(cfg, fmt, quant), rngs=nnx.Rngs(1))
    E.load_compressed(packed, source, dq)
    book = P.CODEBOOKS[fmt]
    for (layer, site), rec in results.items():
        codes, scale, mean, absmax = _double_quantize_reference(rec.quantized.scales)
        got = dq[(layer, site)]
        assert "scales" not in got and np.array_equal(got["absmax_codes"], codes)
        # The mean is a sum over all constants: XLA and NumPy sum them in different orders.
        np.testing.assert_allclose(got["absmax_scales"], scale, **tol("f32_reorder"))
        np.testing.assert_allclose(got["absmax_mean"], mean, **tol("f32_reorder"))
        # The packed layer computes with codebook[q] · (double-dequantized absmax).
        w = book[rec.quantized.codes] * np.repeat(absmax, 32, axis=0)
        linear = A.linear_of(C.get_block(packed, layer), site)
        np.testing.assert_allclose(linear.dense_weight(), w, **tol("f32_reorder"))
    # Bits per weight: the stored arrays' bytes = packing's exact count for each shape, below
    # the single-quantized export's (4 + 32/32 = 5 bits at block 32).
    sizes = E.size_report(results, cfg, fmt, quant)
    assert sizes["model_bytes"] == _nbytes(packed)  # the one formula = the exported arrays
    n = sum(r.weight.size for r in results.values())
    expected = sum(
        P.bits_per_parameter(fmt, 32, double_quant=True, shape=r.weight.shape) * r.weight.size
        for r in results.values()
    )
    assert sizes["linear_bits_per_weight"] == pytest.approx(expected / n, rel=1e-12)
    assert (
        sizes["linear_bits_per_weight"]
        < E.size_report(results, cfg, fmt, single)["linear_bits_per_weight"]
        == pytest.approx(5.0)
    )
    # Logits stay within tolerance of the single-quantized model's.
    ref = Transformer(E.compressed_model_config(cfg, fmt, single), rngs=nnx.Rngs(1))
    E.load_compressed(ref, source, sq)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 16)))
    np.testing.assert_allclose(packed(tokens), ref(tokens), **tol("double_quant_logits"))
    # The commands score the fake-quantized model: with double quantization applied to it, it
    # computes the packed model (so their printed "after" is the written run's).
    E.apply_double_quant(source, results)
    np.testing.assert_allclose(source(tokens), packed(tokens), **tol("model_f32"))
    # ... and the export refuses int4 scales (not absmax constants) before any work.
    with pytest.raises(ValueError, match="double_quant=true quantizes nf4 / fp4 absmax"):
        E.check_exportable(None, dataclasses.replace(quant, format="int4"))
