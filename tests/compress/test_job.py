"""`compactlm quantize` / `compactlm prune` end to end on a briefly trained `nano` run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.commandline import cli
from tests.tolerances import tol


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "compress_cache"))
    path = tmp_path_factory.mktemp("compress") / "nano"
    common = ["train.progress=false", "train.eval_every=0", "data.corpus=pydocs"]
    assert cli("train", "nano", "train.steps=5", *common, f"workdir={path}") == 0
    yield path
    mp.undo()


def _listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def _written_bytes(run_dir) -> int:
    """nbytes of every model array in the run's latest checkpoint (no optimizer state)."""
    import jax
    from flax import nnx

    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    return sum(
        int(x.nbytes) for x in jax.tree.leaves(nnx.state(trainer.program.model(trainer.state)))
    )


FAST = ["eval_tokens=4096", "calib.sequences=4", "calib.batch_size=4"]


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("quantize", ["method=hqq"], "choose one of: 'rtn' | 'gptq' | 'awq'\n"),
        ("quantize", ["format=int3"], "choose one of: 'int4' | 'int4_affine' | 'nf4' | 'fp4'"),
        ("quantize", ["format=nf4", "bits=3"], "bits=3 is not supported by format 'nf4'"),
        ("quantize", ["bits=8"], "bits=8 has no packed storage"),
        ("quantize", ["group_size=128"], "group_size=128 does not divide K=64"),
        ("quantize", ["group_size=48"], "group_size=48 is not supported"),
        ("quantize", ["double_quant=true"], "double_quant=true quantizes nf4 / fp4 absmax"),
        ("prune", ["method=obs"], "choose one of: 'magnitude' | 'wanda' | 'sparsegpt'"),
        ("prune", ["pattern=1:4"], "choose one of: 'unstructured' | '2:4' | '4:8'"),
        ("prune", ["sparsity=1.5"], "sparsity=1.5 must be in (0, 1)"),
        ("prune", ["quantize.format=nf4"], "2:4 values are stored as symmetric int4"),
        ("prune", [], "give the output directory: workdir=OUT"),
        ("prune", ["recover.mode=kd"], "choose one of: 'finetune' | 'distill'\n"),
        ("prune", ["recover.distill.loss=kl"], "choose one of: 'fkl' | 'rkl' | 'jsd'"),
        (
            "prune",
            ["recover.steps=2", "recover.mode=distill", "recover.distill.top_k=999"],
            "distill.top_k=999 exceeds the vocabulary size",
        ),  # fmt: skip
        ("prune", ["recover.distill.init_from_teacher=true"], "do not apply to recovery"),
        (
            "prune",
            [
                "recover.steps=2",
                "recover.mode=distill",
                "recover.distill.features=l2",
                "recover.distill.feature_layers=1:9",
            ],
            "distill.feature_layers pair 1:9 is out of range",
        ),  # fmt: skip
    ],
)
def test_bad_input_exits_2_and_touches_nothing(run_dir, tmp_path, capsys, command, args, message):
    before = _listing(run_dir)
    out = [] if not args and command == "prune" else [f"workdir={tmp_path / 'out'}"]
    assert cli(command, str(run_dir), *args, *out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _listing(run_dir) == before
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_prune_recover_keeps_zeros_and_writes_a_run(run_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["method=wanda", "pattern=4:8", "recover.steps=3", *FAST, "eval_tokens=0"]
    args.append(f"workdir={out}")
    assert cli("prune", str(run_dir), *args) == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "pruned" in printed and "after" in printed
    report = json.loads((out / "compression.json").read_text())
    assert report["sizes"]["density"] == pytest.approx(0.5)
    assert _written_bytes(out) == report["sizes"]["model_bytes"]
    # The recovered model's pruned weights are still exactly zero (and it is a loadable run).
    from compactlm.compress import apply as A
    from compactlm.compress import calibrate as C
    from compactlm.train.loop import load_run

    model = load_run(out).program.model(load_run(out).state)
    for layer in range(model.cfg.n_layers):
        for site in C.SITES:
            w = np.asarray(A.linear_of(C.get_block(model, layer), site).kernel[...])
            assert (w.reshape(-1, 8, w.shape[1]) != 0).sum(axis=1).max() <= 4
    # Compressing a compressed run again is refused.
    assert cli("quantize", str(out), f"workdir={tmp_path / 'again'}") == 2
    assert "already compressed" in capsys.readouterr().err
    # The run holds the recovered weights: its eval is the command's "after".
    assert cli("eval", str(out)) == 0
    assert f"{report['after']['bpb']:.4f}" in capsys.readouterr().out
    assert cli("info", str(out)) == 0
    printed = capsys.readouterr().out
    assert (
        "weights in memory" in printed and "made by                    compactlm prune" in printed
    )


@pytest.mark.parametrize("features", ["none", "cosine"])
def test_prune_recover_by_distillation_keeps_the_2of4_mask(run_dir, tmp_path, capsys, features):
    out = tmp_path / "distilled"
    args = ["method=magnitude", "pattern=2:4", "recover.steps=3", "recover.mode=distill"]
    args += ["recover.eval_every=2", f"recover.distill.features={features}"]
    assert cli("prune", str(run_dir), *args, "eval_tokens=4096", f"workdir={out}") == 0
    printed = capsys.readouterr().out
    assert "recover (distill) 3 steps" in printed and "pruned" in printed
    # The recovery trained on the divergence to the dense teacher (its metrics were logged) ...
    logged = [json.loads(line) for line in (out / "recover" / "metrics.jsonl").open()]
    assert any("distill/divergence" in row for row in logged)
    # With features, the hidden states were matched too (layer for layer: same widths).
    assert any("distill/feature" in row for row in logged) == (features != "none")
    assert [row["step"] for row in logged if "eval/bpb" in row] == [2]  # the recovery curve
    # ... and the exported sparse24 run still satisfies 2:4 (its packed values decompress to a
    # W whose pruned positions are exactly zero: the compressed storage refuses anything else).
    from compactlm.compress import apply as A
    from compactlm.compress import calibrate as C
    from compactlm.train.loop import load_run

    trainer = load_run(out)
    assert trainer.cfg.model.weight_format == "sparse24"
    model = trainer.program.model(trainer.state)
    for layer in range(model.cfg.n_layers):
        for site in C.SITES:
            w = np.asarray(A.linear_of(C.get_block(model, layer), site).dense_weight())
            assert (w.reshape(-1, 4, w.shape[1]) != 0).sum(axis=1).max() <= 2


def test_quantize_writes_a_packed_run_that_eval_and_generate_load(run_dir, tmp_path, capsys):
    out = tmp_path / "int4"
    args = ["method=gptq", "format=int4", "group_size=32", *FAST, "eval_tokens=0"]
    assert cli("quantize", str(run_dir), *args, f"workdir={out}") == 0
    capsys.readouterr()
    report = json.loads((out / "compression.json").read_text())
    assert json.loads((out / "config.json").read_text())["model"]["weight_format"] == "int4"
    assert report["sizes"]["linear_bytes"] < 0.2 * report["sizes"]["dense_linear_bytes"]
    # Predicted = written: the run's restored arrays are the bytes the report (the one formula,
    # models/footprint.weight_bytes) states, and `info` prints the same figure.
    assert _written_bytes(out) == report["sizes"]["model_bytes"]
    assert cli("info", str(out)) == 0
    assert f"{report['sizes']['model_bytes']:,} bytes" in capsys.readouterr().out
    # eval of the packed run (int4_matmul, reference path on CPU) = the "after" of the command.
    assert cli("eval", str(out)) == 0
    assert f"{report['after']['bpb']:.4f}" in capsys.readouterr().out
    assert cli("generate", str(out), "prompt=def ", "max_new_tokens=8", "temperature=0") == 0
    assert capsys.readouterr().out.startswith("def ")
    args = ["batch_sizes=1", "new_tokens=2", "repeats=1"]
    assert cli("bench", "decode", str(out), *args) == 0
    printed = capsys.readouterr().out
    assert (
        "dense " in printed and "int4 / dense at batch 1" in printed and "jnp reference" in printed
    )
    # What it printed is kept in the run (where `compactlm pick` reads a measured latency).
    bench = json.loads((out / "bench_decode.json").read_text())
    assert bench["device"] == "cpu" and [r["format"] for r in bench["rows"]] == ["dense", "int4"]
    assert [r["run"] for r in bench["rows"]] == [str(run_dir.resolve()), str(out.resolve())]
    for row in bench["rows"]:
        assert f"{row['tokens_per_s']:10.1f} tokens/s" in printed


def test_prune_recover_quantize_labels_each_phase(run_dir, tmp_path, capsys):
    """Off a terminal: every compression pass prints one line per block naming its phase and the
    model's block count (from the run's config), and recovery announces itself between them."""
    out = tmp_path / "p24q"
    args = ["method=magnitude", "pattern=2:4", "quantize.group_size=32", "recover.steps=2"]
    assert cli("prune", str(run_dir), *args, *FAST, f"workdir={out}") == 0
    err = capsys.readouterr().err.splitlines()
    n = json.loads((run_dir / "config.json").read_text())["model"]["n_layers"]
    first = [f"magnitude 2:4: block {i} of {n} done in" for i in range(1, n + 1)]
    second = [
        f"after recovery: RTN int4, 2:4 mask fixed: block {i} of {n} done in"
        for i in range(1, n + 1)
    ]
    lines = [line for line in err if " block " in line or line.startswith("recovery")]
    assert [line.split(" done in")[0] + " done in" for line in lines if "block" in line] == (
        first + second
    )
    recovery = [i for i, line in enumerate(lines) if line.startswith("recovery")]
    assert recovery == [n] and "recovery (finetune, pruning mask fixed): 2 steps" in lines[n]


def test_qlora_on_a_packed_double_quantized_base_keeps_its_storage(run_dir, tmp_path, capsys):
    from flax.nnx import state as nnx_state

    from compactlm.models.linear import iter_linears
    from compactlm.models.transfer import storage_vars
    from compactlm.train.loop import load_run

    base = tmp_path / "nf4dq"
    args = ["format=nf4", "group_size=64", "double_quant=true", "eval_tokens=0"]
    assert cli("quantize", str(run_dir), *args, f"workdir={base}") == 0
    assert "double_quant" in capsys.readouterr().out
    report = json.loads((base / "compression.json").read_text())
    assert 4.1 < report["sizes"]["linear_bits_per_weight"] < 4.2  # 4 + 8/64 + 256-block scales
    assert cli("eval", str(base)) == 0  # the packed run computes what the command scored
    assert f"{report['after']['bpb']:.4f}" in capsys.readouterr().out
    # A packed base trains through adapters only, on exactly its storage.
    for bad, message in [
        ([], "fine-tune it with adapters"),
        (["adapter.kind=lora", "model.weight_format=int4"], "adapters train on exactly that"),
        (["adapter.kind=lora", "adapter.init=pissa"], "adapter.init=pissa rewrites the base"),
    ]:
        assert cli("finetune", str(base), *bad, f"workdir={tmp_path / 'bad'}") == 2
        assert message in capsys.readouterr().err
    ft = tmp_path / "qlora"
    common = ["train.steps=2", "train.eval_every=0", "train.progress=false", "optim.lr=1e-2"]
    lora = ["adapter.kind=lora", "adapter.targets=all-linear"]
    assert cli("finetune", str(base), *common, *lora, f"workdir={ft}") == 0
    capsys.readouterr()
    packed, tuned = load_run(base), load_run(ft)  # the adapter run rebuilds its frozen base
    packed_model, model = packed.program.model(packed.state), tuned.program.model(tuned.state)
    n_packed = 0
    for (path, a), (_, b) in zip(iter_linears(packed_model), iter_linears(model), strict=True):
        stored, copied = storage_vars(a), storage_vars(b)
        assert stored.keys() == copied.keys(), path
        for name, var in stored.items():  # the codes / int8 absmax as stored: bit for bit
            assert var[...].dtype == copied[name][...].dtype
            assert np.array_equal(np.asarray(var[...]), np.asarray(copied[name][...])), path
        n_packed += bool(stored)
        if b.adapter is not None and stored:
            assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(nnx_state(b.adapter)))
    assert n_packed == 4 * (1 if model.cfg.scan_layers else model.cfg.n_layers)  # scanned: stacked
    # generate takes the adapter run (finetune's own report evaluated it); merge dequantize=true
    # gives the same function, dense.
    assert cli("generate", str(ft), "prompt=def ", "max_new_tokens=4", "temperature=0") == 0
    merged = tmp_path / "merged"
    assert cli("merge", str(ft), "dequantize=true", f"workdir={merged}") == 0
    capsys.readouterr()
    dense = load_run(merged)
    assert dense.cfg.model.weight_format == "dense"
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(2, 16)), jnp.int32)
    np.testing.assert_allclose(
        dense.program.model(dense.state)(tokens), model(tokens), **tol("model_f32")
    )
