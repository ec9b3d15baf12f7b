"""compress/apply.py: model-level compression writes what the formats hold; AWQ's fold is exact."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.compress import apply as A
from compactlm.compress import calibrate as C
from compactlm.compress.prune import PruneConfig
from compactlm.compress.quantize import QuantConfig
from compactlm.kernels import packing as P
from compactlm.models.config import ModelConfig
from compactlm.models.transformer import Transformer

CFG = dict(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=32)


def _model(scan=False):
    return Transformer(ModelConfig(**CFG, scan_layers=scan), rngs=nnx.Rngs(0))


def _tokens(n=8):
    return np.random.default_rng(0).integers(0, 64, size=(n, 16)).astype(np.int32)


def _randomise_non_linears(model):
    """Non-zero biases and non-identity norms (init 0 / 1 would hide a missed fold)."""
    rng = np.random.default_rng(3)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if "kernel" not in path and "embedding" not in path:
            var.set_value(jnp.asarray(0.5 + rng.uniform(size=var.get_value().shape), jnp.float32))


def _kernels(model):
    return {
        (layer, site): np.asarray(A.linear_of(C.get_block(model, layer), site).kernel[...])
        for layer in range(model.cfg.n_layers)
        for site in C.SITES
    }


@pytest.mark.parametrize(
    "family",
    [
        {},
        # Gemma's (1 + w) norms take the fold through RMSNorm.gain; Llama's mlp_bias divides
        # up's bias with up's columns; Qwen2's q/k/v biases sit after the scaled input.
        dict(norm_plus_one=True, sandwich_norms=True, mlp_activation="gelu_tanh", qk_norm=True),
        dict(qkv_bias=True, o_bias=True, mlp_bias=True),
    ],
    ids=["llama", "gemma3", "biases"],
)
def test_awq_fold_preserves_the_function(family):
    model = Transformer(ModelConfig(**CFG, scan_layers=False, **family), rngs=nnx.Rngs(0))
    _randomise_non_linears(model)
    tokens = jnp.asarray(_tokens())
    before = model(tokens)
    rng = np.random.default_rng(1)
    for block in model.layers:
        weights = {s: A._read(block, s) for s in C.SITES}
        scales = {
            s: rng.uniform(0.3, 3.0, weights[s].shape[0]).astype(np.float32) for s in A.AWQ_SITES
        }
        for site, w in A.fold_awq_scales(block, weights, scales).items():
            A._write(block, site, w)
    np.testing.assert_allclose(model(tokens), before, rtol=1e-4, atol=1e-4)


def test_rtn_writes_packing_format():
    model = _model(scan=True)
    dense = _kernels(model)
    res = A.apply_compression(model, quant=QuantConfig(method="rtn", group_size=32), progress=False)
    for key, w in _kernels(model).items():
        qweight, scales, _ = P.quantize_int4(dense[key], 32)
        np.testing.assert_array_equal(w, np.asarray(P.dequantize(qweight, scales)))
        np.testing.assert_array_equal(res[key].quantized.pack()["qweight"], np.asarray(qweight))


def test_prune_24_then_int4_is_sparse24_int4():
    model = _model()
    dense = _kernels(model)
    res = A.apply_compression(
        model,
        prune_cfg=PruneConfig(method="magnitude", pattern="2:4"),
        quant=QuantConfig(method="rtn", group_size=32),
        progress=False,
    )
    for key, w in _kernels(model).items():
        pruned = np.asarray(P.mask_24_magnitude(jnp.asarray(dense[key])))
        qv, meta, s, _ = P.quantize_sparse24_int4(pruned, 32)
        np.testing.assert_array_equal(w, np.asarray(P.dequantize_sparse24_int4(qv, meta, s)))
        assert (w[~res[key].keep] == 0).all()


@pytest.mark.parametrize(
    "prune_cfg,quant",
    [
        (PruneConfig(method="sparsegpt", pattern="2:4"), QuantConfig(method="gptq", group_size=32)),
        (PruneConfig(method="wanda", pattern="unstructured", sparsity=0.4), None),
        (None, QuantConfig(method="awq", format="nf4", group_size=64)),
    ],
)
def test_calibrated_methods_run_and_keep_patterns(prune_cfg, quant):
    model = _model(scan=True)
    res = A.apply_compression(
        model, prune_cfg=prune_cfg, quant=quant, tokens=_tokens(), progress=False
    )
    assert len(res) == 2 * len(C.SITES)
    for key, w in _kernels(model).items():
        if prune_cfg is not None and prune_cfg.pattern == "2:4":
            assert P.find_24_violation(w) is None
        if prune_cfg is not None:
            assert (w[~res[key].keep] == 0).all()
            assert abs((~res[key].keep).mean() - prune_cfg.effective_sparsity) < 0.02
    assert np.isfinite(np.asarray(model(jnp.asarray(_tokens(2))))).all()


def test_bad_shapes_fail_before_any_work():
    model = _model()
    with pytest.raises(ValueError, match="does not divide K=64"):
        A.apply_compression(model, quant=QuantConfig(group_size=128))


def test_progress_names_the_phase_and_the_total_per_block(capsys):
    """Off a terminal (pytest's stderr is not one): one line per block naming the phase (method
    and format, calibrating or not) and the block count of the model; nothing on stdout."""
    model = _model(scan=True)
    quant = QuantConfig(method="gptq", group_size=32)
    A.apply_compression(model, quant=quant, tokens=_tokens())
    out, err = capsys.readouterr()
    n = CFG["n_layers"]
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == n
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(rf"calibrating \+ GPTQ int4: block {i} of {n} done in \d+\.\d s", line)
    # No calibration: no "calibrating"; a mask held fixed from an earlier pruning says so.
    A.apply_compression(_model(), prune_cfg=PruneConfig(method="magnitude", pattern="2:4"))
    assert capsys.readouterr().err.splitlines()[0].startswith("magnitude 2:4: block 1 of 2 ")
    label = A.phase_label(None, QuantConfig(method="gptq", bits=3), fixed_mask="2:4")
    assert label == "calibrating + GPTQ int4 3-bit, 2:4 mask fixed"
    A.apply_compression(_model(), quant=QuantConfig(method="rtn", group_size=32), progress=False)
    assert capsys.readouterr().err == ""


def test_progress_on_a_terminal_is_one_labelled_bar(capsys):
    from compactlm.train.metrics import StageProgress

    with StageProgress("calibrating + GPTQ int4", total=3, tty=True) as bar:
        for _ in range(3):
            bar.advance()
    err = capsys.readouterr().err
    assert "\r" in err and "calibrating + GPTQ int4: block 3/3 [" in err and "s/block" in err
    assert "done in" not in err  # the bar, not the log lines
