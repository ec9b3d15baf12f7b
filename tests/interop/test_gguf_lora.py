"""GGUF LoRA adapters (`export format=gguf adapter=separate`) read back by gguf-py.

The adapter file is decoded with `gguf.GGUFReader`; each adapted projection's update is rebuilt
as llama.cpp applies it, (alpha / r)·lora_b·lora_a with r = lora_b's columns, the llama q / k
row permutation undone from convert_hf_to_gguf's definition (`reshape(n_head, 2, H/2, ...)
.swapaxes(1, 2)`), and compared with s·(A·B)ᵀ computed here with NumPy from the checkpoint's
A and B (our [in, out] orientation). llama.cpp itself is checked by
scripts/check_gguf_lora_llamacpp.py (docs/deployment.md).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tests.commandline import cli, refused  # noqa: E402

RANK, ALPHA = 4, 12.0  # alpha / r = 3: a scale that is neither 1 nor alpha
TARGETS = "q,k,v,up,down"
# our part → (GGUF tensor of blk.N, our linear holding it)
SITES = {
    "q": ("attn_q", ("attn", "qkv_proj")),
    "k": ("attn_k", ("attn", "qkv_proj")),
    "v": ("attn_v", ("attn", "qkv_proj")),
    "up": ("ffn_up", ("mlp", "gate_up_proj")),
    "down": ("ffn_down", ("mlp", "down_proj")),
}


def read(path):
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    types = {t.name: t.tensor_type for t in reader.tensors}
    return reader, tensors, types


def field(reader, key):
    return reader.fields[key].contents()


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf's LlamaModel.permute (rows of an [out, ...] array)."""
    h2 = w.shape[0] // n_head // 2
    return w.reshape(n_head, h2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _state(run_dir):
    from flax import nnx

    from compactlm.train.loop import load_run

    t = load_run(str(run_dir))
    return t.cfg, nnx.to_pure_dict(nnx.state(t.program.model(t.state)))


@pytest.fixture(scope="module")
def lora_run(nano_run, tmp_path_factory):
    """nano_run fine-tuned 2 steps with a large learning rate, so that every B is far from 0:
    `compactlm finetune`'s own steps, without its evaluations and compressor baselines (the
    slow part of the command, and nothing this file checks)."""
    from compactlm.train.finetune import finetune_config
    from compactlm.train.loop import Trainer
    from compactlm.train.run_dir import prepare_workdir
    from compactlm.train.workdir import claim_workdir

    work = str(tmp_path_factory.mktemp("gguf_lora") / "run")
    args = [
        "adapter.kind=lora",
        f"adapter.rank={RANK}",
        f"adapter.alpha={ALPHA}",
        f"adapter.targets={TARGETS}",
        "train.steps=2",
        "optim.lr=5e-2",
        "optim.warmup_steps=0",
        "train.progress=false",
        "train.eval_every=0",
        "train.tensorboard=false",
    ]
    with pytest.MonkeyPatch.context() as mp:  # nano_run's token cache: nothing re-tokenized
        mp.setenv("COMPACTLM_CACHE", str(nano_run.parent / "cache"))
        cfg = finetune_config(str(nano_run), args, workdir=work)
        claim_workdir(work, "finetune")
        prepare_workdir(str(nano_run), work)
        assert Trainer(cfg, work).train()["status"] == "done"
    return Path(work)


def test_adapter_gguf_is_our_lora_as_llama_cpp_reads_it(lora_run, nano_run, tmp_path, capsys):
    out = tmp_path / "g"
    capsys.readouterr()
    assert cli("export", str(lora_run), "format=gguf", "adapter=separate", f"workdir={out}") == 0
    printed = capsys.readouterr().out
    assert "adapter.gguf: LoRA" in printed and "merged into the base" not in printed
    reader, tensors, types = read(out / "adapter.gguf")
    cfg, state = _state(lora_run)
    m = cfg.model
    N, K, H = m.n_heads, m.n_kv_heads, m.resolved_head_dim

    # metadata: what llama-adapter.cpp checks (general.type, adapter.type, the base's arch)
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "general.architecture") == "llama"
    alpha = field(reader, "adapter.lora.alpha")
    assert alpha == pytest.approx(ALPHA) and reader.fields["adapter.lora.alpha"].types == [
        gguf.GGUFValueType.FLOAT32
    ]
    want_names = {
        f"blk.{i}.{g}.weight.lora_{x}"
        for i in range(m.n_layers)
        for g, _ in SITES.values()
        for x in "ab"
    }
    assert set(tensors) == want_names
    assert all(t == gguf.GGMLQuantizationType.F32 for t in types.values())  # an f32 run

    layers = state["layers"]
    moved = []
    for i in range(m.n_layers):
        for part, (gname, site) in SITES.items():
            a = tensors[f"blk.{i}.{gname}.weight.lora_a"]
            b = tensors[f"blk.{i}.{gname}.weight.lora_b"]
            r = b.shape[1]  # llama.cpp's rank: lora_b's ne0
            assert a.shape[0] == r == RANK
            got = (b.astype(np.float64) @ a.astype(np.float64)) * (alpha / r)
            if part in ("q", "k"):
                got = unpermute(got, N if part == "q" else K)
            ad = layers[site[0]][site[1]]["adapter"]
            A = np.asarray(ad["a"][part][i], np.float64)  # [in, r]
            B = np.asarray(ad["b"][part][i], np.float64)  # [r, out]
            want = (ALPHA / RANK) * (A @ B).T  # s·ΔW in HF's [out, in]
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{i} {part}")
            moved.append(np.max(np.abs(want)))
    assert min(moved) > 1e-4  # every adapter trained away from B = 0: a real comparison

    # model.gguf is the base, unmerged: the base run's weights (the adapter froze them)
    from compactlm.interop.hf_tensors import split_qkv

    _, base_tensors, _ = read(out / "model.gguf")
    _, base_state = _state(nano_run)
    v = split_qkv(np.asarray(base_state["layers"]["attn"]["qkv_proj"]["kernel"][0]), N, K, H)["v"]
    np.testing.assert_array_equal(base_tensors["blk.0.attn_v.weight"], v.T)
    down = np.asarray(base_state["layers"]["mlp"]["down_proj"]["kernel"][1])
    np.testing.assert_array_equal(base_tensors["blk.1.ffn_down.weight"], down.T)


def test_adapter_merged_stays_the_default(lora_run, tmp_path):
    """No adapter=: one merged model.gguf whose v is the base's plus the adapter's update."""
    out = tmp_path / "m"
    assert cli("export", str(lora_run), "format=gguf", f"workdir={out}") == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.gguf"]
    cfg, state = _state(lora_run)
    m = cfg.model
    _, tensors, _ = read(out / "model.gguf")
    qkv = state["layers"]["attn"]["qkv_proj"]
    from compactlm.interop.hf_tensors import split_qkv

    v = split_qkv(np.asarray(qkv["kernel"][0]), m.n_heads, m.n_kv_heads, m.resolved_head_dim)["v"]
    ad = qkv["adapter"]
    delta = (ALPHA / RANK) * np.asarray(ad["a"]["v"][0]) @ np.asarray(ad["b"]["v"][0])
    np.testing.assert_allclose(tensors["blk.0.attn_v.weight"], (v + delta).T, atol=1e-6)


def test_bad_adapter_inputs_exit_2_and_write_nothing(lora_run, nano_run, tmp_path, capsys):
    out = tmp_path / "o"
    err = refused(capsys, "export", str(lora_run), "format=gguf", "adapter=peft", f"workdir={out}")
    assert "merged" in err and "separate" in err and not out.exists()
    err = refused(
        capsys, "export", str(nano_run), "format=gguf", "adapter=separate", f"workdir={out}"
    )
    assert "no adapter" in err and "adapter=merged" in err and not out.exists()
    # DoRA's magnitude has no GGUF LoRA counterpart: refused from config.json, before weights
    dora = tmp_path / "dora"
    shutil.copytree(lora_run, dora)
    cfg = json.loads((dora / "config.json").read_text())
    cfg["model"]["adapter"]["kind"] = "dora"
    (dora / "config.json").write_text(json.dumps(cfg))
    err = refused(capsys, "export", str(dora), "format=gguf", "adapter=separate", f"workdir={out}")
    assert "DoRA" in err and "adapter=merged" in err and not out.exists()
    assert not any(p.name.startswith(".o.") for p in tmp_path.iterdir())
