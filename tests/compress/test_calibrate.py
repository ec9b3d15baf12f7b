"""compress/calibrate.py: statistics = XᵀX of each linear's actual input, layer by layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.compress import calibrate as C
from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer

CFG = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32)


def _models():
    """An unrolled model and a scanned one holding the same weights."""
    unrolled = Transformer(ModelConfig(**CFG, scan_layers=False), rngs=nnx.Rngs(0))
    scanned = Transformer(ModelConfig(**CFG, scan_layers=True), rngs=nnx.Rngs(1))
    blocks = [nnx.state(b) for b in unrolled.layers]
    nnx.update(scanned.layers, jax.tree.map(lambda *a: jnp.stack(a), *blocks))
    nnx.update(scanned, {"embedding": nnx.state(unrolled)["embedding"]})
    return unrolled, scanned


def _xtx(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return x.T @ x


@pytest.mark.parametrize("scan", [False, True])
def test_sites_see_their_inputs_layer_by_layer(scan):
    unrolled, scanned = _models()
    model = scanned if scan else unrolled
    tokens = np.random.default_rng(0).integers(0, 64, size=(6, 16)).astype(np.int32)
    seen = {}

    def compress_block(layer, block, stats):
        seen[layer] = stats
        if layer == 0:  # zero block 0's linears: block 1 must then see the raw embeddings
            for sub, attr in C.SITES.values():
                lin = getattr(getattr(block, sub), attr)
                lin.kernel[...] = jnp.zeros_like(lin.kernel[...])

    ref = unrolled.layers  # the same weights; references computed before compression
    x = jnp.take(unrolled.embedding[...], tokens, axis=0)
    h0 = ref[0].attn_norm(x)
    gu = jnp.split(ref[0].mlp.gate_up_proj(ref[0].mlp_norm(x + _attn(ref[0], x))), 2, axis=-1)
    down0 = jax.nn.silu(gu[0]) * gu[1]
    C.layerwise(model, tokens, compress_block, batch_size=4)
    np.testing.assert_allclose(seen[0]["qkv"].xtx, _xtx(h0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(seen[0]["down"].xtx, _xtx(down0), rtol=1e-4, atol=1e-5)
    # Block 0 compressed to zero linears is the identity: block 1 is calibrated on x itself.
    np.testing.assert_allclose(seen[1]["qkv"].xtx, _xtx(ref[1].attn_norm(x)), rtol=1e-5, atol=1e-4)
    assert seen[1]["qkv"].count == tokens.size
    np.testing.assert_allclose(
        seen[1]["qkv"].mean_abs,
        np.abs(np.asarray(ref[1].attn_norm(x))).mean(axis=(0, 1)),
        rtol=1e-5,
    )
    if scan:  # the zeroed kernels were written back into the stacked state
        assert float(jnp.abs(model.layers.attn.qkv_proj.kernel[...][0]).max()) == 0.0
        assert float(jnp.abs(model.layers.attn.qkv_proj.kernel[...][1]).max()) > 0.0


def _attn(block, x):
    from compactlm.models.layers import Context, rope_sin_cos

    pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    sin, cos = rope_sin_cos(pos, block.attn.head_dim, 10_000.0)
    return block.attn(block.attn_norm(x), Context(sin, cos))[0]


def test_calibration_tokens_are_deterministic_training_windows():
    train = np.arange(10_000, dtype=np.uint16)
    cfg = C.CalibConfig(sequences=8, seq_len=32)
    a, b = C.calibration_tokens(train, cfg, 64), C.calibration_tokens(train, cfg, 64)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 32) and (np.diff(a, axis=1) == 1).all()  # contiguous windows
    other = C.calibration_tokens(train, C.CalibConfig(sequences=8, seq_len=32, seed=1), 64)
    assert not np.array_equal(a, other)
