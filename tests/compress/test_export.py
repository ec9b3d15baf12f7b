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
    results = A.apply_compression(source, prune_cfg=prune_cfg, quant=quant, progress=False)
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
    results = A.apply_compression(source, quant=quant, progress=False)
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


def _field(printed: str, label: str) -> str:
    """The value of `info`'s line `  label   value`."""
    rows = [line.strip() for line in printed.splitlines()]
    return next(row[len(label) :].strip() for row in rows if row.startswith(label + " "))


def test_run_info_reports_parameters_shape_data_and_the_last_validation(nano_run, tmp_path):
    import json
    import shutil

    from compactlm.models.footprint import count_params
    from compactlm.train.run_dir import latest_checkpoint_dir, read_config

    run = tmp_path / "run"  # a copy: the eval files written below must not reach other tests
    shutil.copytree(nano_run, run)
    cfg, saved = read_config(run), json.loads((run / "config.json").read_text())
    split = json.loads((run / "data.json").read_text())
    m, n = cfg.model, count_params(cfg.model)

    printed = E.run_info(str(run))
    assert _field(printed, "preset") == saved["preset"]
    assert _field(printed, "parameters") == (
        f"{n['total']:,} (embedding {n['embedding']:,}, non-embedding {n['non_embedding']:,})"
    )
    shape = _field(printed, "shape")
    for part in (
        f"d_model {m.d_model},",
        f"{m.n_layers} layers",
        f"{m.n_heads} heads / {m.n_kv_heads} kv heads",
        f"d_ff {m.d_ff},",
        f"vocab {m.vocab_size:,},",
        f"context {m.max_seq_len}",
    ):
        assert part in shape, (part, shape)
    data = _field(printed, "data")
    assert data.startswith(f"corpus {cfg.data.corpus}, tokenizer {cfg.data.tokenizer}")
    assert f"{split['train_docs']:,} / {split['val_docs']:,} documents" in data
    steps = int(latest_checkpoint_dir(run).name)
    assert _field(printed, "training").startswith(f"{steps:,} of {cfg.train.steps:,} steps")
    assert _field(printed, "validation") == "not evaluated"  # trained with eval_every=0
    for kept in ("block linears", "weights in memory", "checkpoint on disk"):
        assert _field(printed, kept)

    # A periodic evaluation (train.eval_every) logged in metrics.jsonl ...
    row = {"step": steps, "eval/loss": 2.75, "eval/bpb": 3.5}
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    assert _field(E.run_info(str(run)), "validation") == (
        f"loss {row['eval/loss']:.4f}, bpb {row['eval/bpb']:.4f} (metrics.jsonl, step {steps})"
    )
    # ... is superseded by eval.json, the final evaluation `train` writes (distill: `student`).
    final = {"loss": 2.5, "bpb": 3.25, "ppl": 12.2}
    for written in (final, {"teacher": {"loss": 1.0, "bpb": 1.0}, "student": final}):
        (run / "eval.json").write_text(json.dumps(written))
        assert _field(E.run_info(str(run)), "validation") == (
            f"loss {final['loss']:.4f}, bpb {final['bpb']:.4f} (eval.json)"
        )
