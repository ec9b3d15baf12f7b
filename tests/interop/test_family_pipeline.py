"""Everything downstream takes an imported family (issue 18): finetune (LoRA / DoRA / QLoRA),
merge, export, quantize, prune, distill, generate and eval on the runs `compactlm import` makes
of the transformers fixtures (tests/fixtures/hf/), through the command line, without torch.

References are the fixtures' own tensors (safetensors, HF names, [out, in]) read in NumPy, with
our fused projections split in NumPy by their documented column layouts (interop/hf.py: qkv
columns (k, j, h), q for j < G, k at j = G, v at j = G + 1; gate_up = [gate | up]); greedy
decoding by repeated full forward passes; cross-entropy in NumPy over the checkpoint's own ids.
"""

import ast
import dataclasses
import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from compactlm.config import apply_overrides
from compactlm.models.linear import iter_linears
from compactlm.models.quantized import QuantizedLinear, Sparse24Linear
from compactlm.train.program import load_model
from compactlm.train.run_dir import latest_checkpoint_dir, read_config
from compactlm.train.step import abstract_model
from tests.commandline import cli
from tests.tolerances import tol

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"
FAMILIES = ("qwen2", "qwen3", "llama3", "llama3_untied", "smollm3")
QUIET = ["train.progress=false", "train.tensorboard=false", "train.eval_every=0"]
# Recorded in the imported run's config, so every later command reads the same small data
# (pydocs, ~3k validation tokens of the fixtures' BPE) on one device.
SMALL = [
    "data.corpus=pydocs",
    "data.max_corpus_bytes=200000",
    "train.seq_len=64",
    "train.batch_size=4",
    "mesh.devices=1",
    *QUIET,
]
CALIB = ["calib.sequences=4", "calib.batch_size=4"]
ATOL = tol("printed_loss")["atol"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every supported fixture imported once: {family: run directory}."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("family_pipeline")
    mp.setenv("COMPACTLM_CACHE", str(root / "cache"))
    out = {}
    for name in FAMILIES:
        assert cli("import", str(FIXTURES / name), f"workdir={root / name}", *SMALL) == 0
        out[name] = root / name
    yield out
    mp.undo()


def fixture_tensors(family: str) -> dict[str, np.ndarray]:
    return load_file(FIXTURES / family / "model.safetensors")


def eval_loss(run_dir: Path, capsys) -> float:
    capsys.readouterr()
    assert cli("eval", str(run_dir)) == 0
    out = capsys.readouterr().out
    return float(re.search(r"loss \(nats/token\)\s+([0-9.]+)", out).group(1))


def param_tree(run_dir: Path):
    """(config, model, every variable of the run's latest checkpoint as NumPy: params, packed
    storage, adapters); an adapter run comes with its base rebuilt, as every command loads it."""
    cfg, model = load_model(run_dir)
    return cfg, model, jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


def hf_view(tree: dict, m) -> dict[str, np.ndarray]:
    """A (non-scanned) parameter tree under transformers' names and orientation, split in NumPy.
    Linears stored packed (no `kernel`) are left out; the vocabulary is cut to vocab_valid."""
    H = m.head_dim or m.d_model // m.n_heads
    K, G = m.n_kv_heads, m.n_heads // m.n_kv_heads
    V = m.vocab_valid or m.vocab_size

    def qkv(a):  # [..., K·(G+2)·H] columns (k, j, h) -> q [..., N·H], k, v [..., K·H]
        a = a.reshape(*a.shape[:-1], K, G + 2, H)
        lead = a.shape[:-3]
        return (
            a[..., :G, :].reshape(*lead, K * G * H),
            a[..., G, :].reshape(*lead, K * H),
            a[..., G + 1, :].reshape(*lead, K * H),
        )

    out = {
        "model.embed_tokens.weight": tree["embedding"][:V],
        "model.norm.weight": tree["final_norm"]["scale"],
    }
    if "lm_head" in tree and "kernel" in tree["lm_head"]:
        out["lm_head.weight"] = tree["lm_head"]["kernel"][:, :V].T
    for i, layer in tree["layers"].items():
        p = f"model.layers.{i}."
        attn, mlp = layer["attn"], layer["mlp"]
        out[p + "input_layernorm.weight"] = layer["attn_norm"]["scale"]
        out[p + "post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
        names = [p + f"self_attn.{x}_proj" for x in "qkv"]
        if "kernel" in attn["qkv_proj"]:
            for name, w in zip(names, qkv(attn["qkv_proj"]["kernel"]), strict=True):
                out[name + ".weight"] = w.T
        if "qkv_bias" in attn:
            for name, b in zip(names, qkv(attn["qkv_bias"]), strict=True):
                out[name + ".bias"] = b
        for x in ("q", "k"):
            if f"{x}_norm" in attn:
                out[p + f"self_attn.{x}_norm.weight"] = attn[f"{x}_norm"]["scale"]
        if "kernel" in attn["o_proj"]:
            out[p + "self_attn.o_proj.weight"] = attn["o_proj"]["kernel"].T
        if "o_bias" in attn:
            out[p + "self_attn.o_proj.bias"] = attn["o_bias"]
        F = m.d_ff
        if "kernel" in mlp["gate_up_proj"]:
            w = mlp["gate_up_proj"]["kernel"]
            out[p + "mlp.gate_proj.weight"], out[p + "mlp.up_proj.weight"] = w[:, :F].T, w[:, F:].T
        if "gate_up_bias" in mlp:
            b = mlp["gate_up_bias"]
            out[p + "mlp.gate_proj.bias"], out[p + "mlp.up_proj.bias"] = b[:F], b[F:]
        if "kernel" in mlp["down_proj"]:
            out[p + "mlp.down_proj.weight"] = mlp["down_proj"]["kernel"].T
        if "down_bias" in mlp:
            out[p + "mlp.down_proj.bias"] = mlp["down_bias"]
    return out


def is_bias_or_norm(name: str) -> bool:
    return name.endswith(".bias") or name.endswith("norm.weight")


def assert_biases_and_norms_are_the_fixtures(view: dict, family: str) -> int:
    """Every bias and norm scale of the fixture (q/k norms included) is in `view`, dense, bit for
    bit; returns how many were compared."""
    theirs = {k: w for k, w in fixture_tensors(family).items() if is_bias_or_norm(k)}
    ours = {k: w for k, w in view.items() if is_bias_or_norm(k)}
    assert set(ours) == set(theirs)
    for name, w in theirs.items():
        assert ours[name].dtype == w.dtype and ours[name].shape == w.shape, name
        np.testing.assert_array_equal(ours[name], w, err_msg=name)
    return len(theirs)


def projection_names(family: str, *parts: str) -> set[str]:
    n = json.loads((FIXTURES / family / "config.json").read_text())["num_hidden_layers"]
    return {f"model.layers.{i}.self_attn.{x}_proj.weight" for i in range(n) for x in parts}


# ---------------------------------------------------------------------------------------------
# 1. finetune (LoRA, DoRA, QLoRA) → merge → export
# ---------------------------------------------------------------------------------------------

# QLoRA: the fixtures' widths (32, 64) need NF4 blocks of 32, not 64. quant_group_size comes
# BEFORE weight_format: the other order is refused (test_override_order_does_not_matter).
ADAPTERS = {
    "lora": ["adapter.kind=lora"],
    "dora": ["adapter.kind=dora"],
    "qlora": ["adapter.kind=lora", "model.quant_group_size=32", "model.weight_format=nf4"],
}
# A large learning rate, so that 4 steps move the adapted projections far from the fixture.
FINETUNE = [
    *QUIET,
    "adapter.targets=q_proj,v_proj",  # transformers' names (PEFT's target_modules)
    "adapter.rank=4",
    "adapter.alpha=32",
    "train.steps=4",
    "train.log_every=1",
    "optim.lr=5e-2",
    "optim.warmup_steps=1",
]
FINETUNE_CASES = [(f, a) for f in ("qwen2", "qwen3") for a in ADAPTERS]


@pytest.fixture(scope="module")
def finetuned(runs, tmp_path_factory):
    """{(family, adapter): fine-tuning run directory}, each made once, on first use."""
    root, done = tmp_path_factory.mktemp("finetuned"), {}

    def get(family: str, adapter: str) -> Path:
        if (family, adapter) not in done:
            work = root / f"{family}-{adapter}"
            args = [*ADAPTERS[adapter], *FINETUNE, f"workdir={work}"]
            assert cli("finetune", str(runs[family]), *args) == 0
            done[family, adapter] = work
        return done[family, adapter]

    return get


@pytest.mark.parametrize("family, adapter", FINETUNE_CASES)
def test_finetune_trains_only_the_q_v_adapters_over_a_frozen_imported_base(
    family, adapter, finetuned
):
    work = finetuned(family, adapter)
    metrics = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    report = json.loads((work / "eval.json").read_text())
    assert math.isfinite(report["loss"]) and math.isfinite(report["base/loss"])
    if adapter != "qlora":  # same dense base: the whole difference is the adapters'
        assert abs(report["loss"] - report["base/loss"]) > 20 * ATOL

    # transformers' q_proj,v_proj = our q,v: the q and v views of every layer's fused qkv
    # projection, nothing else; the checkpoint holds those adapters only (no frozen arrays)
    meta = json.loads((latest_checkpoint_dir(work) / "state" / "_METADATA").read_text())
    saved = [ast.literal_eval(k) for k in meta["tree_metadata"]]  # orbax writes tuple reprs
    params = [k[1:] for k in saved if k[0] == "params"]
    assert not [k for k in saved if k[0] == "frozen" and len(k) > 1]
    n_layers = len(projection_names(family, "q"))
    expect = {
        ("layers", str(i), "attn", "qkv_proj", "adapter", kind, part)
        for i in range(n_layers)
        for kind in ("a", "b", *(["magnitude"] if adapter == "dora" else []))
        for part in ("q", "v")
    }
    assert {k[:-1] for k in params} == expect  # (the last key is orbax's "value")
    cfg, model, tree = param_tree(work)
    assert cfg.model.adapter.targets == ("q_proj", "v_proj")
    ours = dataclasses.replace(cfg.model.adapter, targets=("q", "v"))
    with_ours = abstract_model(dataclasses.replace(cfg.model, adapter=ours))
    paths = {tuple(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(with_ours, nnx.LoRAParam))}
    assert paths == expect

    for i in range(n_layers):  # the adapters moved: B starts at zero
        b = tree["layers"][i]["attn"]["qkv_proj"]["adapter"]["b"]
        assert np.abs(b["q"]).max() > 0 and np.abs(b["v"]).max() > 0
    # the base the fine-tune computes with is the fixture's, bit for bit: all of it (LoRA,
    # DoRA), or all but the NF4-packed block linears (QLoRA)
    view, theirs = hf_view(tree, cfg.model), fixture_tensors(family)
    assert_biases_and_norms_are_the_fixtures(view, family)
    kernels = {k for k in theirs if k.endswith("_proj.weight")}
    if adapter == "qlora":
        assert not kernels & set(view)
        linears = [lin for path, lin in iter_linears(model) if path.startswith("layers")]
        assert linears and all(
            isinstance(lin, QuantizedLinear) and lin.format == "nf4" for lin in linears
        )
    assert set(theirs) - set(view) == (kernels if adapter == "qlora" else set())
    for name, w in view.items():
        np.testing.assert_array_equal(w, theirs[name], err_msg=name)


# NF4 (QLoRA, Dettmers et al. 2023, appendix E): the 16 levels in units of a block's absmax.
# The largest gap is between -1 and -0.6962: a weight is at most 0.152·absmax from its level;
# double quantization moves absmax by < 0.5 % (an 8-bit code per 256 constants): 0.16.
NF4_HALF_GAP = 0.16


@pytest.mark.parametrize("family, adapter", FINETUNE_CASES)
def test_merge_and_export_change_only_the_adapted_projections(family, adapter, finetuned, tmp_path):
    """The exported tensors differ from the fixture's exactly in q_proj and v_proj (LoRA, DoRA);
    with an NF4 base every projection is NF4-rounded (within half a level of the fixture's), and
    the biases, norms and embeddings are the fixture's bit for bit in every case."""
    work = finetuned(family, adapter)
    extra = ["dequantize=true"] if adapter == "qlora" else []
    assert cli("merge", str(work), *extra, f"workdir={tmp_path / 'm'}") == 0
    assert cli("export", str(tmp_path / "m"), f"workdir={tmp_path / 'hf'}") == 0
    ours, theirs = load_file(tmp_path / "hf" / "model.safetensors"), fixture_tensors(family)
    assert set(ours) == set(theirs)
    changed = {k for k in theirs if not np.array_equal(ours[k], theirs[k])}
    adapted = projection_names(family, "q", "v")
    if adapter != "qlora":
        assert changed == adapted
        return
    assert not any(is_bias_or_norm(k) or "embed" in k or "lm_head" in k for k in changed)
    frozen = {k for k in theirs if k.endswith("_proj.weight")} - adapted
    assert adapted <= changed and frozen <= changed
    group = 32  # model.quant_group_size: NF4 blocks along each output's inputs
    for name in frozen:
        w = theirs[name].reshape(theirs[name].shape[0], -1, group)
        absmax = np.abs(w).max(-1, keepdims=True)
        err = np.abs(ours[name].reshape(w.shape) - w)
        assert np.all(err <= NF4_HALF_GAP * absmax), name


# ---------------------------------------------------------------------------------------------
# 2. quantize (GPTQ int4) and prune (2:4) keep biases and q/k norms dense
# ---------------------------------------------------------------------------------------------

COMPRESSIONS = {
    "gptq-int4": ("quantize", ["method=gptq", "format=int4", "group_size=32", *CALIB]),
    "sparsegpt-2:4": ("prune", ["method=sparsegpt", "pattern=2:4", *CALIB]),
    "wanda-2:4": ("prune", ["method=wanda", "pattern=2:4", *CALIB]),
}
COMPRESS_CASES = [
    ("qwen2", "gptq-int4"),
    ("llama3_untied", "gptq-int4"),
    ("qwen3", "gptq-int4"),
    ("llama3_untied", "sparsegpt-2:4"),
    ("qwen3", "wanda-2:4"),
]


@pytest.mark.parametrize("family, method", COMPRESS_CASES)
def test_compression_keeps_biases_and_qk_norms_and_evaluates_to_its_after(
    family, method, runs, tmp_path, capsys
):
    """The command runs; `eval OUT` gives the "after" loss it printed; biases (q/k/v, o, MLP)
    and q/k norm scales stay dense, the fixture's bit for bit (embedding and head too); every
    block linear is stored packed: int4 codes (<= 16 values per group of 32 inputs) or 2:4
    (<= 2 non-zeros in every 4 inputs; Wanda keeps the fixture's own values)."""
    command, args = COMPRESSIONS[method]
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(command, str(runs[family]), *args, f"workdir={out}") == 0
    after = float(re.search(r"after\s+loss\s+([0-9.]+)", capsys.readouterr().out).group(1))
    assert math.isfinite(after)
    assert eval_loss(out, capsys) == pytest.approx(after, abs=ATOL)

    cfg, model, tree = param_tree(out)
    view = hf_view(tree, cfg.model)
    assert assert_biases_and_norms_are_the_fixtures(view, family) > 0
    theirs = fixture_tensors(family)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in theirs:
            np.testing.assert_array_equal(view[name], theirs[name], err_msg=name)
    # every block linear changed storage; none is a dense kernel any more
    assert not [k for k in view if k.endswith("_proj.weight")]
    linears = [(p, lin) for p, lin in iter_linears(model) if p.startswith("layers")]
    assert len(linears) == 4 * cfg.model.n_layers
    kernels = fused_fixture_kernels(family, cfg.model)
    for path, lin in linears:
        w = np.asarray(lin.dense_weight())  # [in, out]
        if method == "gptq-int4":
            assert isinstance(lin, QuantizedLinear) and cfg.model.weight_format == "int4"
            assert lin.qweight[...].dtype == np.int32
            # symmetric int4 codes times one scale per 32 inputs: <= 16 values in each group
            groups = np.sort(w.reshape(-1, 32, w.shape[1]), axis=1)
            levels = 1 + (np.diff(groups, axis=1) != 0).sum(axis=1)
            assert levels.max() <= 16 and not np.array_equal(w, kernels[path]), path
        else:
            assert isinstance(lin, Sparse24Linear) and cfg.model.weight_format == "sparse24"
            nonzero = (w != 0).reshape(-1, 4, w.shape[1]).sum(1)  # 2:4 along the inputs
            assert nonzero.max() <= 2, path
            if method == "wanda-2:4":  # Wanda only masks: the kept weights are the fixture's
                assert (nonzero == 2).all(), path
                np.testing.assert_array_equal(w[w != 0], kernels[path][w != 0], err_msg=path)


def fused_fixture_kernels(family: str, m) -> dict[str, np.ndarray]:
    """The fixture's block linears fused as ours, by module path: [in, out], qkv columns
    (k, j, h) (j < G: query head k·G + j; G: key; G + 1: value), gate_up = [gate | up]."""
    w = fixture_tensors(family)
    H = m.head_dim or m.d_model // m.n_heads
    K, G, D = m.n_kv_heads, m.n_heads // m.n_kv_heads, m.d_model
    out = {}
    for i in range(m.n_layers):
        p = f"model.layers.{i}."
        q, k, v = (w[p + f"self_attn.{x}_proj.weight"].T for x in "qkv")
        heads = [q.reshape(D, K, G, H), k.reshape(D, K, 1, H), v.reshape(D, K, 1, H)]
        out[f"layers.{i}.attn.qkv_proj"] = np.concatenate(heads, axis=2).reshape(D, -1)
        out[f"layers.{i}.attn.o_proj"] = w[p + "self_attn.o_proj.weight"].T
        gate, up = w[p + "mlp.gate_proj.weight"].T, w[p + "mlp.up_proj.weight"].T
        out[f"layers.{i}.mlp.gate_up_proj"] = np.concatenate([gate, up], axis=1)
        out[f"layers.{i}.mlp.down_proj"] = w[p + "mlp.down_proj.weight"].T
    return out


# ---------------------------------------------------------------------------------------------
# 3. distill: an imported Qwen3 teaches a 1-layer Qwen3-shaped student (its tokenizer)
# ---------------------------------------------------------------------------------------------


def test_distill_a_smaller_student_of_the_imported_family(runs, tmp_path):
    """The in-CI version of "a 4-layer Qwen3-shaped student from an 8-layer teacher": the 2-layer
    imported qwen3 teaches a 1-layer student of its shape (`nano` with the teacher's widths,
    q/k norms and RoPE base as model.* overrides), started from the teacher's embedding and
    block 0 (distill.init_from_teacher, DistilBERT's), on the teacher's own tokenizer."""
    teacher = runs["qwen3"]
    t = read_config(teacher).model
    shape = [
        f"model.{k}={getattr(t, k)}"
        for k in ("d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "norm_eps", "rope_theta")
    ]
    shape += ["model.qk_norm=true", "model.tie_embeddings=true", "model.n_layers=1"]
    student = tmp_path / "student"
    steps = ["train.steps=3", "train.log_every=1", "train.seq_len=64", "train.batch_size=4"]
    args = ["nano", *shape, "distill.init_from_teacher=true", *steps, "mesh.devices=1", *QUIET]
    assert cli("distill", str(teacher), *args, f"workdir={student}") == 0

    s = read_config(student).model
    assert (s.n_layers, t.n_layers) == (1, 2) and s.qk_norm and s.head_dim == t.head_dim
    assert (s.vocab_size, s.vocab_valid) == (t.vocab_size, t.vocab_valid) == (512, 464)
    assert (student / "tokenizer.json").read_bytes() == (teacher / "tokenizer.json").read_bytes()
    metrics = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    steps_run = [m for m in metrics if "train/loss" in m]
    assert [m["step"] for m in steps_run] == [1, 2, 3]
    for m in steps_run:
        assert math.isfinite(m["train/loss"]) and math.isfinite(m["distill/divergence"])
        assert m["distill/divergence"] > 0
    rows = json.loads((student / "eval.json").read_text())
    assert math.isfinite(rows["student"]["loss"]) and math.isfinite(rows["teacher"]["loss"])
    assert rows["student"]["params"] < rows["teacher"]["params"]


def test_cross_tokenizer_student_of_an_imported_teacher(runs, tmp_path):
    """A byte-level nano student of the imported qwen3 (its own BPE, 464 ids padded to 512)
    with distill.cross_tokenizer=gold: the student keeps its own vocabulary (the teacher's
    vocab_valid was once copied into it and refused), the teacher's ids come from re-tokenizing
    each window, and GOLD's matched / unmatched parts are logged."""
    student = tmp_path / "student"
    steps = ["train.steps=2", "train.log_every=1", "model.n_layers=1", "mesh.devices=1", *QUIET]
    gold = ["data.tokenizer=byte", "distill.cross_tokenizer=gold", "distill.loss=jsd"]
    assert cli("distill", str(runs["qwen3"]), "nano", *gold, *steps, f"workdir={student}") == 0
    s = read_config(student)
    assert (s.data.tokenizer, s.model.vocab_size, s.model.vocab_valid) == ("byte", 320, 0)
    metrics = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    rows = [m for m in metrics if "distill/matched" in m]
    assert [m["step"] for m in rows] == [1, 2]
    assert all(math.isfinite(m["distill/matched"] + m["distill/unmatched"]) for m in rows)
    assert all(0 < m["distill/aligned"] <= 1 for m in rows)


# ---------------------------------------------------------------------------------------------
# 4. generate: greedy through the KV cache = argmax of repeated full forward passes
# ---------------------------------------------------------------------------------------------

NEW_TOKENS = 8


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_repeated_full_forward_passes(family, runs, capsys, monkeypatch):
    """`compactlm generate temperature=0`: every token it samples through the KV cache is the
    argmax, over the checkpoint's own ids, of the last position of the uncached model run on all
    ids so far (smollm3: its third layer has no RoPE, also through the cache); it prints them."""
    from compactlm.data import load_tokenizer
    from compactlm.data.tokenizer import stop_ids
    from compactlm.models import generate as generation

    calls = []  # (prompt ids, new ids) of every generate() the command makes, unchanged

    def recorded(model, prompt, **kw):
        out = generation_generate(model, prompt, **kw)
        prompt = np.asarray(prompt).reshape(-1)
        calls.append((prompt.tolist(), np.asarray(out)[0, len(prompt) :].tolist()))
        return out

    generation_generate = generation.generate
    monkeypatch.setattr(generation, "generate", recorded)
    capsys.readouterr()
    args = ["prompt=The quick brown fox", "temperature=0", "heal=false"]
    assert cli("generate", str(runs[family]), *args, f"max_new_tokens={NEW_TOKENS}") == 0
    printed = capsys.readouterr().out
    [(prompt, got)] = calls

    cfg, model = load_model(runs[family])
    V, L = cfg.model.vocab_valid, len(prompt) + NEW_TOKENS
    forward = nnx.jit(lambda m, ids_BT: m(ids_BT))
    ids, margins = list(prompt), []
    for _ in range(NEW_TOKENS):
        # One compiled length: ids zero-padded to L (causal: the positions after the last id do
        # not change its logits); the whole forward pass again for every new token, no cache.
        padded = np.zeros((1, L), np.int32)
        padded[0, : len(ids)] = ids
        logits = np.asarray(forward(model, jnp.asarray(padded)))[0, len(ids) - 1, :V]
        margins.append(np.diff(np.sort(logits)[-2:])[0])
        ids.append(int(np.argmax(logits)))
    want = ids[len(prompt) :]
    stops = set(stop_ids(load_tokenizer(runs[family])))
    end = next((i for i, t in enumerate(want) if t in stops), NEW_TOKENS)
    assert got[: end + 1] == want[: end + 1]  # (after a stop id, generate pads with it)
    tok = load_tokenizer(runs[family])
    assert printed == tok.decode([*prompt, *want[:end]]) + "\n"
    assert min(margins[: end + 1]) > 1e-4  # no near-tie: the greedy choice is well defined


# ---------------------------------------------------------------------------------------------
# 5. eval: cross-entropy over the checkpoint's own ids (the padding takes no probability mass)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_is_the_cross_entropy_over_the_checkpoints_own_ids(family, runs, capsys):
    """`compactlm eval` = NumPy cross-entropy from the model's logits restricted to the first
    vocab_valid columns, over the validation split's non-overlapping windows (every target once);
    compactlm's own loss (train/loss.py, over all padded columns) gives the same."""
    from compactlm.models.transformer import PADDING_LOGIT
    from compactlm.train.loop import load_run
    from compactlm.train.loss import cross_entropy

    printed = eval_loss(runs[family], capsys)
    trainer = load_run(runs[family])
    model = trainer.program.model(trainer.state)
    tokens, T = np.asarray(trainer.data.val_tokens), trainer.cfg.train.seq_len
    m = trainer.cfg.model
    V = m.vocab_valid
    assert V and m.vocab_size == 512 > V  # the fixtures' 456 / 464 ids, padded
    W = -(-(len(tokens) - 1) // T)
    windows, mask = np.zeros((W, T + 1), np.int32), np.zeros((W, T), bool)
    for w in range(W):
        chunk = tokens[w * T : w * T + T + 1]
        windows[w, : len(chunk)], mask[w, : len(chunk) - 1] = chunk, True
    logits = np.asarray(model(jnp.asarray(windows[:, :-1])))  # [W, T, 512] f32
    targets = windows[:, 1:]
    assert targets[mask].max() < V

    z = logits[..., :V].astype(np.float64)
    top = z.max(-1, keepdims=True)
    log_p = z - (top + np.log(np.exp(z - top).sum(-1, keepdims=True)))
    nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    want = float(nll[mask].mean())
    assert printed == pytest.approx(want, abs=ATOL)
    ours, _ = cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask, jnp.float32)
    )
    np.testing.assert_allclose(float(ours), want, **tol("f32_reorder"))
    assert np.all(logits[..., V:] == PADDING_LOGIT)  # exp() of which is 0 in every softmax


# ---------------------------------------------------------------------------------------------
# Found on the way: override order (QLoRA on the fixtures' widths)
# ---------------------------------------------------------------------------------------------


def test_override_order_does_not_matter(runs):
    """ModelConfig is validated once, on the final combination (config.py::_replace_all): nf4
    before quant_group_size=32 is not checked against the default group size 64."""
    base = read_config(runs["qwen3"])  # d_model 32: NF4 blocks of 64 do not fit, 32 do
    want = apply_overrides(base, ["model.quant_group_size=32", "model.weight_format=nf4"])
    got = apply_overrides(base, ["model.weight_format=nf4", "model.quant_group_size=32"])
    assert got == want
