"""GGUF export: block bytes, tensors and metadata read back by gguf-py (llama.cpp's own library).

Every check decodes with `gguf.GGUFReader` and `gguf.quants.dequantize`, never with our own
reader. The llama q / k row permutation is undone here from convert_hf_to_gguf's definition
(`reshape(n_head, 2, H/2, ...).swapaxes(1, 2)`), not with the exporter's index.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from compactlm.interop import gguf as gx  # noqa: E402
from compactlm.interop import gguf_blocks as gb  # noqa: E402
from compactlm.kernels import packing  # noqa: E402
from tests.commandline import cli, refused  # noqa: E402

Q = gguf.GGMLQuantizationType


def read(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    return reader, tensors, types


def field(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf's LlamaModel.permute (rows of an [out, ...] array)."""
    h2 = w.shape[0] // n_head // 2
    return w.reshape(n_head, h2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------- block bytes


@pytest.mark.parametrize("rows,cols", [(3, 32), (5, 96)])
def test_blocks_bit_exact_against_gguf_dequantize(rows, cols):
    rng = np.random.default_rng(0)
    d = rng.standard_normal((rows, cols // 32)).astype(np.float16)
    m = rng.standard_normal((rows, cols // 32)).astype(np.float16)
    q4 = rng.integers(-8, 8, (rows, cols)).astype(np.int8)
    u4 = rng.integers(0, 16, (rows, cols)).astype(np.uint8)
    q8 = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    rep = lambda a: np.repeat(a.astype(np.float32), 32, axis=1)  # noqa: E731
    got = gguf.quants.dequantize(gb.pack_q4_0(q4, d), Q.Q4_0)
    np.testing.assert_array_equal(got, rep(d) * q4)
    got = gguf.quants.dequantize(gb.pack_q4_1(u4, d, m), Q.Q4_1)
    np.testing.assert_array_equal(got, rep(d) * u4 + rep(m))
    got = gguf.quants.dequantize(gb.pack_q8_0(q8, d), Q.Q8_0)
    np.testing.assert_array_equal(got, rep(d) * q8)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    import ml_dtypes

    want = w.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(gguf.quants.dequantize(gb.bf16_bytes(w), Q.BF16), want)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("affine", [False, True])
def test_int4_codes_kept_exact_with_f16_scales(group, affine):
    """Our int4 [K, N] (K != N, so a transposition cannot pass) with f16-exact scales (and,
        affine, f16-exact offsets −s·z) becomes
    Q4_0 / Q4_1 whose gguf dequantization is our dequantized weight transposed, bit for bit;
        a group of 64 / 128 repeats its scale over its 32-blocks."""
    rng = np.random.default_rng(group)
    K, N = 256, 48
    w = rng.standard_normal((K, N)).astype(np.float32)
    qweight, scales, zeros = packing.quantize_int4(w, group, symmetric=not affine)
    scales = np.asarray(scales).astype(np.float16).astype(np.float32)
    if affine:  # m = −s·z must be an f16 too: a power-of-two s makes s·z (z ≤ 15) one
        scales = np.exp2(np.floor(np.log2(scales))).astype(np.float32)
    arrays = {"qweight": np.asarray(qweight), "scales": scales}
    if affine:
        arrays["zeros"] = np.asarray(zeros)
    p = gx.Packed("int4", arrays, group)
    t = gx.auto_type(p, "float32")
    assert t == ("q4_1" if affine else "q4_0")
    data, raw, rec = gx.encode_linear("x", p, t)
    ours = np.asarray(packing.dequantize_int4(qweight, scales, arrays.get("zeros")))
    np.testing.assert_array_equal(gguf.quants.dequantize(data, raw), ours.T)
    assert (rec.how, rec.max_error, rec.inexact_scales) == ("codes kept", 0.0, 0)


def test_inexact_scales_are_counted_and_their_error_measured():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 40)).astype(np.float32)
    qweight, scales, _ = packing.quantize_int4(w, 32)  # f32 scales: rarely f16 values
    p = gx.Packed("int4", {"qweight": np.asarray(qweight), "scales": np.asarray(scales)}, 32)
    data, raw, rec = gx.encode_linear("x", p, "q4_0")
    ours = np.asarray(packing.dequantize_int4(qweight, scales)).T
    err = np.max(np.abs(gguf.quants.dequantize(data, raw) - ours))
    assert rec.max_error == pytest.approx(float(err), rel=0, abs=0) and err > 0
    s = np.asarray(scales)
    assert rec.inexact_scales == int(np.sum(s.astype(np.float16).astype(np.float32) != s)) * 1


def test_nf4_goes_to_q8_0_with_its_error():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((128, 64)).astype(np.float32)
    qweight, absmax = packing.quantize_nf4(w, 64)
    p = gx.Packed("nf4", {"qweight": np.asarray(qweight), "scales": np.asarray(absmax)}, 64)
    assert gx.auto_type(p, "float32") == "q8_0"
    data, raw, rec = gx.encode_linear("x", p, "q8_0")
    ours = np.asarray(packing.dequantize_nf4(qweight, absmax)).T
    err = float(np.max(np.abs(gguf.quants.dequantize(data, raw) - ours)))
    assert rec.how == "requantized" and rec.max_error == err and 0 < err < 0.02


def test_llama3_rope_freqs_divide_to_our_frequencies():
    import dataclasses

    from compactlm.config import make_config
    from compactlm.models.layers import rope_inv_freq

    m = dataclasses.replace(make_config("nano").model, rope_scaling="llama3", rope_factor=8.0)
    m = dataclasses.replace(m, rope_original_max_len=16, rope_theta=10000.0)
    f = gx.rope_freqs(m)
    H = m.resolved_head_dim
    plain = np.asarray(rope_inv_freq(H, m.rope_theta))
    np.testing.assert_allclose(plain / f, np.asarray(rope_inv_freq(H, m.rope_theta, m)), rtol=1e-6)
    assert f.min() >= 1.0 and f.max() == pytest.approx(8.0)


# --------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def int4_run(nano_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "q4"
    args = ["method=rtn", "format=int4", "group_size=32", "eval_tokens=2048"]
    assert cli("quantize", str(nano_run), *args, f"workdir={out}") == 0
    return out


def _state(run_dir):
    from flax import nnx

    from compactlm.train.loop import load_run

    t = load_run(str(run_dir))
    return t.cfg, nnx.to_pure_dict(nnx.state(t.program.model(t.state)))


def test_int4_run_auto_export(int4_run, tmp_path, capsys):
    from compactlm.data import load_tokenizer
    from compactlm.interop.hf_tensors import split_gate_up, split_qkv
    from compactlm.interop.hf_tokenizer import hf_tokenizer_json

    out = tmp_path / "g"
    capsys.readouterr()
    assert cli("export", str(int4_run), "format=gguf", f"workdir={out}") == 0
    printed = capsys.readouterr().out
    assert "Q4_0  codes kept" in printed and "max |weight error|" in printed
    reader, tensors, types = read(out / "model.gguf")
    cfg, state = _state(int4_run)
    m = cfg.model
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim

    # metadata
    assert field(reader, "general.architecture") == "llama"
    want = {
        "context_length": m.max_seq_len,
        "embedding_length": m.d_model,
        "block_count": m.n_layers,
        "feed_forward_length": m.d_ff,
        "attention.head_count": N,
        "attention.head_count_kv": K,
        "rope.freq_base": m.rope_theta,
        "attention.layer_norm_rms_epsilon": m.norm_eps,
        "vocab_size": m.vocab_size,
    }
    for key, value in want.items():
        assert field(reader, f"llama.{key}") == pytest.approx(value), key
    tok = load_tokenizer(int4_run)
    vocab = json.loads(hf_tokenizer_json(tok))
    ours = {i: t for t, i in vocab["model"]["vocab"].items()}
    ours |= {a["id"]: a["content"] for a in vocab["added_tokens"]}
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == m.vocab_size
    assert [tokens[i] for i in sorted(ours)] == [ours[i] for i in sorted(ours)]
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    # llama.cpp's gpt2 vocab refuses a file without merges; a byte run's one merge (of two
    # specials) can never apply, so every byte keeps its id (checked in llama.cpp itself:
    # docs/deployment.md)
    merges = field(reader, "tokenizer.ggml.merges")
    assert len(merges) == 1 and all(part in tokens for part in merges[0].split(" "))
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_id

    # every block linear: Q4_0 whose values are ours with f16 scales, transposed and permuted
    layers = state["layers"]
    errors = []
    for i in range(m.n_layers):

        def deq(site, scale_dtype, i=i):
            arrays = layers[site[0]][site[1]]
            s = np.asarray(arrays["scales"][i]).astype(scale_dtype).astype(np.float32)
            return np.asarray(packing.dequantize_int4(arrays["qweight"][i], s))

        for exact in (True, False):
            dt = np.float16 if exact else np.float32
            qkv = split_qkv(deq(("attn", "qkv_proj"), dt), N, K, H)
            gu = split_gate_up(deq(("mlp", "gate_up_proj"), dt))
            want = {
                "attn_q": qkv["q"].T,
                "attn_k": qkv["k"].T,
                "attn_v": qkv["v"].T,
                "attn_output": deq(("attn", "o_proj"), dt).T,
                "ffn_gate": gu["gate"].T,
                "ffn_up": gu["up"].T,
                "ffn_down": deq(("mlp", "down_proj"), dt).T,
            }
            for name, w in want.items():
                got = tensors[f"blk.{i}.{name}.weight"]
                assert types[f"blk.{i}.{name}.weight"] == Q.Q4_0
                if name in ("attn_q", "attn_k"):
                    got = unpermute(got, N if name == "attn_q" else K)
                if exact:
                    np.testing.assert_array_equal(got, w, err_msg=name)
                else:
                    errors.append(np.max(np.abs(got - w)))
        np.testing.assert_array_equal(
            tensors[f"blk.{i}.attn_norm.weight"], layers["attn_norm"]["scale"][i]
        )
    assert f"{max(errors):.3g}" in printed  # the printed error is the measured one
    np.testing.assert_array_equal(tensors["token_embd.weight"], state["embedding"])
    assert "output.weight" not in tensors  # tied: llama.cpp falls back to token_embd


def test_dense_f32_export_equals_weights(nano_run, tmp_path):
    from compactlm.interop.hf_tensors import split_qkv

    out = tmp_path / "g"
    assert cli("export", str(nano_run), "format=gguf", "type=f32", f"workdir={out}") == 0
    _, tensors, types = read(out / "model.gguf")
    cfg, state = _state(nano_run)
    m = cfg.model
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim
    layers = state["layers"]
    for i in range(m.n_layers):
        qkv = split_qkv(np.asarray(layers["attn"]["qkv_proj"]["kernel"][i]), N, K, H)
        assert types[f"blk.{i}.attn_q.weight"] == Q.F32
        np.testing.assert_array_equal(unpermute(tensors[f"blk.{i}.attn_q.weight"], N), qkv["q"].T)
        np.testing.assert_array_equal(unpermute(tensors[f"blk.{i}.attn_k.weight"], K), qkv["k"].T)
        np.testing.assert_array_equal(tensors[f"blk.{i}.attn_v.weight"], qkv["v"].T)
        down = np.asarray(layers["mlp"]["down_proj"]["kernel"][i])
        np.testing.assert_array_equal(tensors[f"blk.{i}.ffn_down.weight"], down.T)
    np.testing.assert_array_equal(tensors["output_norm.weight"], state["final_norm"]["scale"])


def test_bad_inputs_exit_2_and_write_nothing(nano_run, tmp_path, capsys):
    out = tmp_path / "o"
    err = refused(capsys, "export", str(nano_run), "format=gguf", "type=q3_k", f"workdir={out}")
    assert "q4_0" in err and not out.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    refused(capsys, "export", str(nano_run), "format=gguf", f"workdir={busy}")
    assert [p.name for p in busy.iterdir()] == ["x"]
    # A run whose architecture llama.cpp's llama / qwen2 / qwen3 cannot compute (a sliding
    # window on a Llama): refused from config.json, before any weight is read.
    odd = tmp_path / "odd"
    shutil.copytree(nano_run, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model"]["sliding_window"] = 16
    (odd / "config.json").write_text(json.dumps(cfg))
    err = refused(capsys, "export", str(odd), "format=gguf", f"workdir={out}")
    assert "sliding_window" in err and not out.exists()
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())
    # A finished GGUF export is recognised as one (train/workdir.py), and never overwritten.
    done = tmp_path / "done"
    done.mkdir()
    (done / "model.gguf").write_bytes(b"GGUF")
    err = refused(capsys, "export", str(nano_run), "format=gguf", f"workdir={done}")
    assert "`compactlm export`" in err and (done / "model.gguf").read_bytes() == b"GGUF"


def test_quantize_with_f16_scales_exports_q4_0_bit_exact(nano_run, tmp_path, capsys):
    """`quantize scale_dtype=float16` chooses the codes on f16 scales: every GGUF Q4_0 block then
    holds compactlm's own codes and scales, and gguf-py dequantizes to our weights exactly."""
    q4 = tmp_path / "q4"
    args = ["method=rtn", "format=int4", "group_size=32", "eval_tokens=2048"]
    assert cli("quantize", str(nano_run), *args, "scale_dtype=float16", f"workdir={q4}") == 0
    cfg, state = _state(q4)
    scales = state["layers"]["attn"]["qkv_proj"]["scales"]
    assert np.array_equal(np.asarray(scales).astype(np.float16).astype(np.float32), scales)
    capsys.readouterr()
    assert cli("export", str(q4), "format=gguf", f"workdir={tmp_path / 'g'}") == 0
    printed = capsys.readouterr().out
    assert "Q4_0  codes kept" in printed and "not exactly float16" not in printed
    _, tensors, types = read(tmp_path / "g" / "model.gguf")
    arrays = state["layers"]["mlp"]["down_proj"]
    for i in range(cfg.model.n_layers):
        ours = np.asarray(packing.dequantize_int4(arrays["qweight"][i], arrays["scales"][i]))
        assert types[f"blk.{i}.ffn_down.weight"] == Q.Q4_0
        np.testing.assert_array_equal(tensors[f"blk.{i}.ffn_down.weight"], ours.T)


def test_requantized_export_prints_the_eval_loss_of_the_files_weights(int4_run, tmp_path, capsys):
    """A requantized export (NF4 / FP4 → Q8_0 under type=auto; here the int4 run forced to Q8_0,
    the same path) prints the eval loss of the run and of the run computing with the file's
    weights. Recomputed here from the file: gguf-py's dequantize, the llama permutation undone
    from its definition, the qkv / gate_up kernels rebuilt, compactlm's eval (the definition of
    eval loss) on that model."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from compactlm.interop.hf_tensors import join_qkv
    from compactlm.train.finetune import merged_trainer
    from compactlm.train.loop import load_run
    from compactlm.train.step import state_from_model

    run, n = int4_run, 1024  # validation tokens scored (CI time; the doc's runs: all)
    capsys.readouterr()
    args = ["format=gguf", "type=q8_0", f"eval_tokens={n}", f"workdir={tmp_path / 'g'}"]
    assert cli("export", str(run), *args) == 0
    printed = capsys.readouterr().out
    assert "Q8_0  requantized" in printed

    _, tensors, _ = read(tmp_path / "g" / "model.gguf")
    trainer = load_run(str(run))
    before = trainer.evaluate(n)
    dense = merged_trainer(trainer)
    m = dense.cfg.model
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim
    model = dense.program.model(dense.state)
    state = nnx.state(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    layers = params["layers"]
    assert m.scan_layers  # kernels stacked [L, K, N]

    def stack(fn):
        return np.stack([fn(i) for i in range(m.n_layers)])

    def w(i, name):
        return tensors[f"blk.{i}.{name}.weight"]

    layers["attn"]["qkv_proj"]["kernel"] = stack(
        lambda i: join_qkv(
            {"q": unpermute(w(i, "attn_q"), N).T, "k": unpermute(w(i, "attn_k"), K).T}
            | {"v": w(i, "attn_v").T},
            N,
            K,
            H,
        )
    )
    layers["attn"]["o_proj"]["kernel"] = stack(lambda i: w(i, "attn_output").T)
    layers["mlp"]["gate_up_proj"]["kernel"] = stack(
        lambda i: np.concatenate([w(i, "ffn_gate").T, w(i, "ffn_up").T], axis=1)
    )
    layers["mlp"]["down_proj"]["kernel"] = stack(lambda i: w(i, "ffn_down").T)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    dense.state = state_from_model(dense.program, model, seed=0)
    after = dense.evaluate(n)
    assert before["loss"] != after["loss"]
    want = f"{int(before['tokens']):,} validation tokens: {before['loss']:.6f} as the run "
    want += f"computes, {after['loss']:.6f} with the file's weights "
    want += f"({after['loss'] - before['loss']:+.3g} nats/token)"
    assert want in printed, printed


# --------------------------------------------------------------------------- gemma3, smollm3

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"


def test_gemma3_fixture_export_metadata_and_tensors(tmp_path):
    """Gemma 3 as llama.cpp's gemma3 reads it (gemma3.cpp's load_arch_hparams, convert_hf_to_
    gguf's Gemma3Model): the sliding window, which layers slide, both RoPE bases as keys; every
    norm stored as its gain 1 + w; q / k rows not permuted (NEOX); the q norm carrying
    query_pre_attn_scalar (24 here) where llama.cpp scales by 1/√head_dim. Checked against the
    fixture's own config.json and safetensors."""
    from safetensors.numpy import load_file

    src = FIXTURES / "gemma3_text"
    assert cli("import", str(src), f"workdir={tmp_path / 'run'}") == 0
    assert cli("export", str(tmp_path / "run"), "format=gguf", f"workdir={tmp_path / 'g'}") == 0
    reader, tensors, types = read(tmp_path / "g" / "model.gguf")
    c = json.loads((src / "config.json").read_text())
    hf = load_file(src / "model.safetensors")
    assert field(reader, "general.architecture") == "gemma3"
    want = {
        "attention.sliding_window": c["sliding_window"],
        "attention.sliding_window_pattern": [t == "sliding_attention" for t in c["layer_types"]],
        "rope.freq_base": c["rope_parameters"]["full_attention"]["rope_theta"],
        "rope.freq_base_swa": c["rope_parameters"]["sliding_attention"]["rope_theta"],
        "attention.key_length": c["head_dim"],
        "attention.head_count_kv": c["num_key_value_heads"],
    }
    for key, value in want.items():
        assert field(reader, f"gemma3.{key}") == pytest.approx(value), key
    c_q = np.float32(np.sqrt(c["head_dim"] / c["query_pre_attn_scalar"]))
    names = {
        "attn_norm": "input_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_k_norm": "self_attn.k_norm",
    }
    for i in range(c["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        for ours, theirs in names.items():
            gain = np.float32(1) + hf[f"{pre}{theirs}.weight"]
            np.testing.assert_array_equal(tensors[f"blk.{i}.{ours}.weight"], gain, err_msg=ours)
        q_gain = (np.float32(1) + hf[f"{pre}self_attn.q_norm.weight"]) * c_q
        np.testing.assert_array_equal(tensors[f"blk.{i}.attn_q_norm.weight"], q_gain)
        for ours, theirs in {
            "attn_q": "q_proj",
            "attn_k": "k_proj",
            "attn_output": "o_proj",
        }.items():
            np.testing.assert_array_equal(
                tensors[f"blk.{i}.{ours}.weight"], hf[f"{pre}self_attn.{theirs}.weight"]
            )
            assert types[f"blk.{i}.{ours}.weight"] == Q.F32
        np.testing.assert_array_equal(
            tensors[f"blk.{i}.ffn_gate.weight"], hf[f"{pre}mlp.gate_proj.weight"]
        )
    np.testing.assert_array_equal(tensors["output_norm.weight"], 1 + hf["model.norm.weight"])
    np.testing.assert_array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"])


def test_smollm3_export_needs_llama_cpps_nope_layers(nano_run, tmp_path, capsys):
    """llama.cpp's smollm3 drops RoPE on every fourth layer, fixed: the committed fixture (NoPE on
    layer 2 of 3) is refused in one line; a 4-layer run with no_rope_layers=[1, 1, 1, 0] is
    written as smollm3 with llama's q / k permutation (convert_hf_to_gguf's SmolLM3Model is a
    LlamaModel)."""
    from compactlm.interop.hf_tensors import split_qkv

    assert cli("import", str(FIXTURES / "smollm3"), f"workdir={tmp_path / 'fx'}") == 0
    capsys.readouterr()
    assert cli("export", str(tmp_path / "fx"), "format=gguf", f"workdir={tmp_path / 'o'}") == 2
    err = capsys.readouterr().err.strip()
    assert "no_rope_layers=[1, 1, 0]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()

    smol = tmp_path / "smol"
    shutil.copytree(nano_run, smol)
    cfg = json.loads((smol / "config.json").read_text())
    assert cfg["model"]["n_layers"] == 4
    cfg["model"]["no_rope_layers"] = [1, 1, 1, 0]
    (smol / "config.json").write_text(json.dumps(cfg))
    assert cli("export", str(smol), "format=gguf", "type=f32", f"workdir={tmp_path / 'g'}") == 0
    reader, tensors, _ = read(tmp_path / "g" / "model.gguf")
    assert field(reader, "general.architecture") == "smollm3"
    assert field(reader, "smollm3.block_count") == 4
    m, state = _state(smol)
    m = m.model
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim
    for i in range(m.n_layers):
        qkv = split_qkv(np.asarray(state["layers"]["attn"]["qkv_proj"]["kernel"][i]), N, K, H)
        np.testing.assert_array_equal(unpermute(tensors[f"blk.{i}.attn_q.weight"], N), qkv["q"].T)
        np.testing.assert_array_equal(unpermute(tensors[f"blk.{i}.attn_k.weight"], K), qkv["k"].T)
        np.testing.assert_array_equal(
            tensors[f"blk.{i}.attn_norm.weight"], state["layers"]["attn_norm"]["scale"][i]
        )
