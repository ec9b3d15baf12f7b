"""compress/export.py: the packed model (kernels' storage) computes the fake-quantized model."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.compress import apply as A
from compactlm.compress import export as E
from compactlm.compress.prune import PruneConfig
from compactlm.compress.quantize import QuantConfig
from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer
from tests.tolerances import tol

CFG = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=32)


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
    sizes = E.size_report(results, arrays, fmt, 0, quant)
    expected = {"int4": 4.0, "nf4": 4.0, "fp4": 4.0, "sparse24": 17.0, "sparse24_int4": 3.0}
    if fmt in expected:  # codes (+ metadata) without the per-group scales
        assert expected[fmt] <= sizes["linear_bits_per_weight"] < expected[fmt] + 1.1
