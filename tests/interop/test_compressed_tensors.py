"""compressed-tensors export: the written tensors decompressed from the format's definition.

The decompressor below is written from compressed-tensors' pack-quantized definition
(`pack_to_int32` / `PackedQuantizationCompressor.decompress`), never with the exporter's code:
element k of row n sits in bits 4·(k % 8) of `weight_packed[n, k // 8]`, stored as q + 8;
the zero point is packed the same way along the OUTPUT dimension; w = (q − z) · s per group.
It must give compactlm's own dequantized weights (packing.py, the kernels' spec) exactly.
"""

import json
import shutil

import numpy as np
import pytest

from tests.commandline import cli, refused


def unpack_nibbles(words, along_rows=False):
    """int32 words → the 8 unsigned nibbles each holds, lowest first, along axis 1 (or 0)."""
    w = np.asarray(words).view(np.uint32)
    if along_rows:
        return unpack_nibbles(w.T.view(np.int32)).T
    nib = [(w >> np.uint32(4 * i)) & np.uint32(0xF) for i in range(8)]
    return np.stack(nib, axis=-1).reshape(w.shape[0], -1).astype(np.int32)


def decompress(tensors, prefix, args):
    """Dense f32 [out, in] of one pack-quantized linear, from the format's definition."""
    n, k = tensors[prefix + "weight_shape"].tolist()
    q = unpack_nibbles(tensors[prefix + "weight_packed"])[:, :k] - 8  # signed [-8, 7]
    s = tensors[prefix + "weight_scale"].astype(np.float32)
    if args["symmetric"]:
        z = np.zeros_like(s)
    else:
        z = unpack_nibbles(tensors[prefix + "weight_zero_point"], along_rows=True)[:n] - 8
    g = k if args["strategy"] == "channel" else args["group_size"]
    assert s.shape == (n, k // g)
    rep = lambda a: np.repeat(a.astype(np.float32), g, axis=1)  # noqa: E731
    return (q.astype(np.float32) - rep(z)) * rep(s)  # f32 throughout, as the model computes


@pytest.fixture(scope="module")
def runs(nano_run, tmp_path_factory):
    """nano quantized rtn int4 group 32 (symmetric, affine) and 2:4 + int4, each exported."""
    root = tmp_path_factory.mktemp("ct")
    jobs = {
        "sym": ("quantize", "method=rtn", "format=int4", "group_size=32"),
        "affine": ("quantize", "method=rtn", "format=int4_affine", "group_size=32"),
        "s24q": ("prune", "pattern=2:4", "method=magnitude", "quantize.method=rtn")
        + ("quantize.format=int4", "quantize.group_size=32"),
    }
    out = {}
    for name, (command, *args) in jobs.items():
        run = root / name
        assert cli(command, str(nano_run), *args, f"workdir={run}") == 0
        ct = root / f"ct_{name}"
        assert cli("export", str(run), "format=compressed-tensors", f"workdir={ct}") == 0
        out[name] = (run, ct)
    return out


def ours(run):
    """HF name → compactlm's f32 dequantized weight [out, in], per block linear."""
    from compactlm.interop.gguf import _load, _packed_linears

    cfg, _, state, params, _, _ = _load(str(run))
    packed = _packed_linears(state, params, cfg.model)
    return cfg, {name: p.dequantize().T for name, p in packed.items()}


@pytest.mark.parametrize("name", ["sym", "affine", "s24q"])
def test_decompressed_equals_our_dequantized_weights(runs, name):
    from safetensors.numpy import load_file

    run, ct = runs[name]
    tensors = load_file(str(ct / "model.safetensors"))
    qc = json.loads((ct / "config.json").read_text())["quantization_config"]
    args = qc["config_groups"]["group_0"]["weights"]
    cfg, want = ours(run)
    assert len(want) == 7 * cfg.model.n_layers
    for hf_name, w in want.items():
        prefix = hf_name.removesuffix("weight")
        assert hf_name not in tensors  # packed, not dense
        assert tensors[prefix + "weight_packed"].dtype == np.int32
        got = decompress(tensors, prefix, args)
        np.testing.assert_array_equal(got, w, err_msg=hf_name)
        if name == "s24q":  # every aligned 4 along in holds at most 2 non-zeros
            assert np.all(np.count_nonzero(got.reshape(got.shape[0], -1, 4), axis=-1) <= 2)
    emb = tensors["model.embed_tokens.weight"]
    assert emb.dtype == np.float32 and emb.shape[1] == cfg.model.d_model
    assert all(not n.startswith("lm_head") or n == "lm_head.weight" for n in tensors)


def test_quantization_config_fields(runs):
    for name, (_, ct) in runs.items():
        config = json.loads((ct / "config.json").read_text())
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        qc = config["quantization_config"]
        assert qc["quant_method"] == "compressed-tensors"
        assert qc["format"] == "pack-quantized" and qc["quantization_status"] == "compressed"
        assert qc["ignore"] == ["lm_head"]
        group = qc["config_groups"]["group_0"]
        assert group["targets"] == ["Linear"] and group["format"] == "pack-quantized"
        w = group["weights"]
        assert (w["num_bits"], w["type"], w["strategy"]) == (4, "int", "group")
        assert w["symmetric"] == (name != "affine")
        # 2:4 + int4 groups count compressed rows: 32 of them span 64 dense rows.
        assert w["group_size"] == (64 if name == "s24q" else 32)
        sparsity = qc["sparsity_config"]
        if name == "s24q":
            assert sparsity["sparsity_structure"] == "2:4" and sparsity["format"] == "dense"
            assert 0.5 <= sparsity["global_sparsity"] < 0.6
        else:
            assert sparsity == {}
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            assert (ct / f).is_file()


def test_bad_inputs_exit_2_and_write_nothing(nano_run, tmp_path, capsys):
    out = tmp_path / "o"
    err = refused(
        capsys, "export", str(nano_run), "format=compressed-tensors", "type=q4_0", f"workdir={out}"
    )
    assert "type" in err and not out.exists()
    # An NF4 run: no compressed-tensors form, refused from config.json before any weight loads.
    nf4 = tmp_path / "nf4"
    shutil.copytree(nano_run, nf4)
    cfg = json.loads((nf4 / "config.json").read_text())
    cfg["model"]["weight_format"] = "nf4"
    (nf4 / "config.json").write_text(json.dumps(cfg))
    err = refused(capsys, "export", str(nf4), "format=compressed-tensors", f"workdir={out}")
    assert "format=gguf" in err and "format=hf" in err and not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    refused(capsys, "export", str(nano_run), "format=compressed-tensors", f"workdir={busy}")
    assert [p.name for p in busy.iterdir()] == ["x"]
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())
