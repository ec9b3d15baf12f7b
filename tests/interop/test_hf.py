"""Hugging Face Llama interop: export → import is bit-exact, and the exported tensors are a Llama.

The reference forward pass below is written from transformers' LlamaForCausalLM definition
(RMSNorm, rotate-half RoPE, GQA by repeating kv heads, SwiGLU), in float64 NumPy, reading only
the exported files by their HF names — it shares no code with compactlm's model.
"""

import json
import os
import re
import shutil
import stat
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from compactlm.config import make_config
from compactlm.interop import hf, safetensors_io
from compactlm.train.loop import run
from tests.commandline import cli
from tests.tolerances import tol


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    yield
    mp.undo()


def _train(workdir: Path, *overrides: str) -> Path:
    base = [
        "train.progress=false",
        "train.tensorboard=false",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.steps=1",
        "data.corpus=pydocs",
    ]
    run(make_config("nano", [*base, *overrides]), workdir)
    return workdir


@pytest.fixture(scope="module")
def byte_run(tmp_path_factory, cache):
    """nano as is: scanned layers, tied embeddings, byte tokenizer."""
    return _train(tmp_path_factory.mktemp("byte") / "run")


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, cache):
    """The other branches: unrolled layers, an untied lm_head, a trained BPE tokenizer."""
    return _train(
        tmp_path_factory.mktemp("bpe") / "run",
        "model.scan_layers=false",
        "model.tie_embeddings=false",
        "data.tokenizer=bpe",
        "data.bpe_vocab_size=384",
    )


def _export(run_dir: Path) -> Path:
    out = run_dir.parent / "hf"
    assert cli("export", str(run_dir), "format=hf", f"workdir={out}") == 0
    return out


@pytest.fixture(scope="module")
def exported(byte_run, bpe_run):
    """Each run exported once: {"byte_run": hf_dir, "bpe_run": hf_dir} (copy before changing)."""
    return {"byte_run": _export(byte_run), "bpe_run": _export(bpe_run)}


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "hf"))


# --- the reference Llama ------------------------------------------------------------------------


def _rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rotate_half(x):
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([-x2, x1], axis=-1)


def reference_llama_logits(hf_dir: Path, tokens: np.ndarray) -> np.ndarray:
    """logits [T, V] of LlamaForCausalLM for one sequence, from config.json + safetensors only."""
    c = json.loads((hf_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(hf_dir / "model.safetensors").items()}
    D, N, K = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    H = c.get("head_dim") or D // N
    T = tokens.shape[0]
    inv_freq = 1.0 / c["rope_theta"] ** (np.arange(0, H, 2) / H)
    angle = np.arange(T)[:, None] * inv_freq[None, :]
    cos = np.concatenate([np.cos(angle)] * 2, axis=-1)  # [T, H]
    sin = np.concatenate([np.sin(angle)] * 2, axis=-1)
    causal = np.tril(np.ones((T, T), bool))
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"], c["rms_norm_eps"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, N, H).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, K, H).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, K, H).transpose(1, 0, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k, v = np.repeat(k, N // K, axis=0), np.repeat(v, N // K, axis=0)  # repeat_kv
        scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(H), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(T, N * H)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], c["rms_norm_eps"])
    head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def _our_logits(run_dir: Path, tokens: np.ndarray) -> np.ndarray:
    from flax import nnx

    from compactlm.models.transformer import Transformer

    cfg, _, params, _ = hf.load_run_params(run_dir)
    model = nnx.eval_shape(lambda: Transformer(cfg.model, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, params))
    nnx.update(model, state)
    return np.asarray(model(tokens[None]))[0]


@pytest.mark.parametrize("which", ["byte_run", "bpe_run"])
def test_exported_weights_are_a_llama(which, request, exported):
    run_dir, out = request.getfixturevalue(which), exported[which]
    c = json.loads((out / "config.json").read_text())
    tokens = np.random.default_rng(0).integers(0, c["vocab_size"], size=40)
    ref = reference_llama_logits(out, tokens)
    ours = _our_logits(run_dir, tokens)
    # Same function, f32 vs f64 summation over 4 layers: the model_f32 tolerance.
    np.testing.assert_allclose(ours, ref, **tol("model_f32"))
    assert np.abs(ref).max() > 0.1  # the logits are not trivially zero
    print(f"{which}: max |ours - reference| = {np.abs(ours - ref).max():.2e}")
    # [out, in] orientation and HF names, no fused tensors left.
    w = load_file(out / "model.safetensors")
    assert w["model.layers.0.self_attn.q_proj.weight"].shape == (c["hidden_size"],) * 2
    assert w["model.layers.0.mlp.gate_proj.weight"].shape == (
        c["intermediate_size"],
        c["hidden_size"],
    )
    assert ("lm_head.weight" in w) == (not c["tie_word_embeddings"])
    assert not any("qkv" in name or "gate_up" in name for name in w)


@pytest.mark.parametrize("which", ["byte_run", "bpe_run"])
def test_export_import_round_trip_is_bit_exact(which, request, exported, tmp_path):
    run_dir, out = request.getfixturevalue(which), exported[which]
    assert cli("import", str(out), f"workdir={tmp_path / 'back'}") == 0
    cfg_a, tok_a, params_a, _ = hf.load_run_params(run_dir)
    cfg_b, tok_b, params_b, step_b = hf.load_run_params(tmp_path / "back")
    assert cfg_a == cfg_b and step_b == 0
    assert tok_a.fingerprint() == tok_b.fingerprint()
    flat_a = jax.tree_util.tree_leaves_with_path(params_a)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(params_b))
    assert len(flat_a) == len(flat_b) >= 8  # embedding, norms and 4 kernels (stacked if scanned)
    for path, a in flat_a:
        b = flat_b[path]
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_byte_tokenizer_for_transformers_maps_bytes_to_the_same_ids(exported):
    from tokenizers import Tokenizer

    from compactlm.data import ByteTokenizer

    out = exported["byte_run"]
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ours = ByteTokenizer()
    text = "def f(x):\n\treturn 'héllo wörld' + \"€ 😀\"  # ünïcode\r\n" + "".join(
        chr(c) for c in range(1, 300)
    )
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == ours.encode(text).tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert [tok.token_to_id(t) for t in ("<|eos|>", "<|pad|>", "<|bos|>")] == [256, 257, 258]
    config = json.loads((out / "config.json").read_text())
    assert (config["eos_token_id"], config["bos_token_id"]) == (ours.eos_id, ours.bos_id)


def test_bpe_tokenizer_exports_as_is(bpe_run, exported):
    from tokenizers import Tokenizer

    from compactlm.data import load_tokenizer

    out = exported["bpe_run"]
    theirs, ours = Tokenizer.from_file(str(out / "tokenizer.json")), load_tokenizer(bpe_run)
    text = "for key, value in sorted(items.items()):\n    print(key, value)  # é"
    assert theirs.encode(text, add_special_tokens=False).ids == ours.encode(text).tolist()
    assert theirs.token_to_id("<|eos|>") == ours.eos_id


def _shard(hf_dir: Path) -> None:
    """Rewrite model.safetensors as two shards + model.safetensors.index.json (as HF does)."""
    w = load_file(hf_dir / "model.safetensors")
    names = sorted(w)
    shards = {"model-00001-of-00002.safetensors": names[::2]}
    shards["model-00002-of-00002.safetensors"] = names[1::2]
    weight_map = {}
    for file, part in shards.items():
        save_file({n: w[n] for n in part}, hf_dir / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (hf_dir / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": weight_map}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))


def test_foreign_sharded_checkpoint_imports_and_evaluates(byte_run, exported, tmp_path, capsys):
    """A checkpoint without our config block (as from the Hub), sharded: an "hf" tokenizer run
    whose eval loss equals the original run's (same weights, same ids)."""
    out = _copy(exported["byte_run"], tmp_path)
    config = json.loads((out / "config.json").read_text())
    del config["compactlm"]
    (out / "config.json").write_text(json.dumps(config))
    _shard(out)
    run_dir = tmp_path / "imported"
    assert cli("import", str(out), f"workdir={run_dir}", "data.corpus=pydocs") == 0
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["data"]["tokenizer"] == "hf" and saved["model"]["d_model"] == 64
    capsys.readouterr()
    assert cli("eval", str(byte_run)) == 0
    original = re.search(r"loss \(nats/token\)\s+(\S+)", capsys.readouterr().out).group(1)
    assert cli("eval", str(run_dir)) == 0
    imported = capsys.readouterr().out
    assert f"loss (nats/token)            {original}" in imported
    args = ["generate", str(run_dir), "prompt=def ", "max_new_tokens=8", "temperature=0"]
    assert cli(*args) == 0
    assert capsys.readouterr().out.startswith("def ")


def _hf_dir_with(tmp_path: Path, src: Path, **changes) -> Path:
    out = _copy(src, tmp_path)
    config = json.loads((out / "config.json").read_text())
    config.pop("compactlm")
    config.update(changes)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"attention_bias": True}, "tensor model.layers.0.self_attn.o_proj.bias is missing"),
        ({"mlp_bias": True}, "tensor model.layers.0.mlp.down_proj.bias is missing"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 8.0}}, "rope_scaling.rope_type='yarn'"),
        ({"sliding_window": 4096}, "sliding_window=4096 is not supported"),
        ({"model_type": "mistral"}, "model_type='mistral' is not supported; valid: 'llama'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported; valid: 'silu'"),
        (
            {"vocab_size": 321},
            "model.embed_tokens.weight has shape [320, 64], config.json implies [321, 64]",
        ),
        ({"hidden_size": 96}, "tensor model.embed_tokens.weight has shape [320, 64]"),
    ],
)
def test_unsupported_fields_are_one_line_errors(changes, message, exported, tmp_path, capsys):
    src = _hf_dir_with(tmp_path, exported["byte_run"], **changes)
    assert cli("import", str(src), f"workdir={tmp_path / 'out'}") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bias_tensor_and_missing_tensor_are_named(exported, tmp_path, capsys):
    src = _copy(exported["byte_run"], tmp_path)
    w = load_file(src / "model.safetensors")
    w["model.layers.0.self_attn.q_proj.bias"] = np.zeros(64, np.float32)
    save_file(w, src / "model.safetensors", metadata={"format": "pt"})
    assert cli("import", str(src), f"workdir={tmp_path / 'a'}") == 2
    assert "tensor model.layers.0.self_attn.q_proj.bias is a bias" in capsys.readouterr().err
    del w["model.layers.0.self_attn.q_proj.bias"], w["model.layers.3.mlp.up_proj.weight"]
    save_file(w, src / "model.safetensors", metadata={"format": "pt"})
    assert cli("import", str(src), f"workdir={tmp_path / 'b'}") == 2
    assert "tensor model.layers.3.mlp.up_proj.weight is missing" in capsys.readouterr().err


def test_pickle_weights_are_never_loaded(tmp_path, exported, capsys):
    src = _copy(exported["byte_run"], tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    assert cli("import", str(src), f"workdir={tmp_path / 'out'}") == 2
    assert "pickle files are never loaded" in capsys.readouterr().err


def test_no_pickle_anywhere_in_the_package():
    """Loading must never execute code from a file: no pickle, torch.load or allow_pickle."""
    root = Path(hf.__file__).parents[1]
    pattern = re.compile(
        r"\bimport pickle\b|\bpickle\.|cPickle|torch\.load|allow_pickle\s*=\s*True"
    )
    hits = [
        f"{p.relative_to(root)}:{i}"
        for p in sorted(root.rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits
    assert len(list(root.rglob("*.py"))) > 30  # really scanned the package


def test_export_is_as_readable_as_the_umask_says(byte_run, tmp_path):
    """The export is built in a mkdtemp directory (0700) and safetensors writes 0600: what is
    renamed into place must be 0755 / 0644 under umask 022, as any directory and file made with
    mkdir / open."""
    out = tmp_path / "hf"
    old = os.umask(0o022)
    try:
        assert cli("export", str(byte_run), f"workdir={out}") == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert {hf.HF_WEIGHTS, hf.HF_TOKENIZER, hf.HF_CONFIG} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644), modes


def test_a_compressed_run_exports_only_through_merge(byte_run, tmp_path, capsys):
    """Packed int4 layers are not Params: exporting them directly would drop them silently."""
    quantized, merged = tmp_path / "q", tmp_path / "m"
    args = ["method=rtn", "format=int4", "group_size=32", f"workdir={quantized}"]
    assert cli("quantize", str(byte_run), *args) == 0
    assert cli("export", str(quantized), f"workdir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err
    assert "compressed or adapter weights" in err and "compactlm merge" in err
    assert not (tmp_path / "bad").exists()
    assert cli("merge", str(quantized), f"workdir={merged}", "dequantize=true") == 0
    out = tmp_path / "hf"
    assert cli("export", str(merged), f"workdir={out}") == 0
    tokens = np.arange(24) % 250
    np.testing.assert_allclose(
        _our_logits(merged, tokens), reference_llama_logits(out, tokens), **tol("model_f32")
    )


def test_large_checkpoints_say_what_they_are_doing(byte_run, tmp_path, monkeypatch, capsys):
    """Above PROGRESS_BYTES of weights, export prints a line per stage and import counts the
    tensors it reads (off a terminal: ~10 lines, the last with the checkpoint's tensor count);
    below it (nano: 0.8 MiB), both stay quiet on stderr."""
    quiet = tmp_path / "quiet"
    assert cli("export", str(byte_run), "format=hf", f"workdir={quiet}") == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(safetensors_io, "PROGRESS_BYTES", 0)  # (import and export read it)
    out = tmp_path / "hf"
    assert cli("export", str(byte_run), "format=hf", f"workdir={out}") == 0
    err = capsys.readouterr().err
    mib = (out / "model.safetensors").stat().st_size / 2**20
    for stage in (
        f"export: restoring the checkpoint of {byte_run}",
        "export: splitting and transposing to HF tensors",
        f"export: writing model.safetensors ({mib:,.1f} MiB)",  # (+ a small header)
    ):
        assert re.search(rf"^{re.escape(stage)}: \d+\.\d s$", err, re.M), (stage, err)
    _shard(out)
    n = len(load_file(out / "model-00001-of-00002.safetensors")) + len(
        load_file(out / "model-00002-of-00002.safetensors")
    )
    assert cli("import", str(out), f"workdir={tmp_path / 'run'}") == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "reading weights" in x]
    assert 2 <= len(lines) <= 11
    assert re.fullmatch(
        rf"import: reading weights from 2 files: {n} of {n} tensors, \d+\.\d s", lines[-1]
    )
