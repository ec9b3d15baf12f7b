"""Fine-tuning from a run directory: adapter-only checkpoints, exact resume, merge equality, a
changed base refused, bad input as one-line errors."""

import json

import jax
import numpy as np
import pytest

from compactlm import cli, commands
from compactlm.config import make_config
from compactlm.train.loop import Trainer, load_metrics, load_run
from compactlm.train.run_dir import latest_checkpoint_dir
from tests.tolerances import tol

QUIET = ["train.progress=false", "train.tensorboard=false", "train.eval_every=0"]
SMALL_DATA = ["data.max_corpus_bytes=200000"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("base")
    cfg = make_config("nano", [*QUIET, *SMALL_DATA, "train.steps=8", "train.batch_size=8"])
    trainer = Trainer(cfg, workdir)
    trainer.restore_or_init()
    trainer.train()
    return workdir


def _finetune(base_dir, workdir, *extra):
    args = [*QUIET, *SMALL_DATA, "train.batch_size=8", "optim.warmup_steps=1", *extra]
    return commands.finetune(str(base_dir), args, workdir=str(workdir))


def _losses(workdir):
    return {m["step"]: m["train/loss"] for m in load_metrics(workdir) if "train/loss" in m}


def test_adapter_run_checkpoints_adapters_only_resumes_exactly_and_merges(base_dir, tmp_path):
    lora = [
        "adapter.kind=lora",
        "adapter.targets=all-linear",
        "adapter.rank=4",
        "train.log_every=1",
    ]
    _finetune(base_dir, tmp_path / "ab", *lora, "train.steps=4")
    _finetune(base_dir, tmp_path / "a", *lora, "train.steps=2")
    _finetune(base_dir, tmp_path / "a", *lora, "train.steps=4")  # resume from step 2
    assert _losses(tmp_path / "a") == _losses(tmp_path / "ab")
    ref = json.loads((tmp_path / "a" / "base.json").read_text())
    assert ref["run_dir"] == str(base_dir.resolve()) and len(ref["fingerprint"]) == 64

    # no frozen base inside: the checkpoint's tree has no array under `frozen` (orbax metadata)
    meta = json.loads((latest_checkpoint_dir(tmp_path / "a") / "state" / "_METADATA").read_text())
    saved = list(meta["tree_metadata"])
    assert any("'adapter'" in k for k in saved)
    assert not [k for k in saved if k.startswith("('frozen', ")], saved

    adapted = load_run(tmp_path / "a")
    commands.merge(str(tmp_path / "a"), [], workdir=str(tmp_path / "m"))
    merged = load_run(tmp_path / "m")
    assert merged.cfg.model.adapter.kind == "none" and int(merged.state.step) == 4
    tokens = jax.numpy.asarray(np.asarray(adapted.data.val_tokens[:65]).reshape(1, 65))
    want = adapted.program.model(adapted.state)(tokens)
    got = merged.program.model(merged.state)(tokens)
    np.testing.assert_allclose(got, want, **tol("f32_reorder"))


def test_a_changed_base_is_refused(base_dir, tmp_path, tmp_path_factory):
    moved = tmp_path_factory.mktemp("base_copy")
    import shutil

    shutil.copytree(base_dir, moved, dirs_exist_ok=True)
    _finetune(moved, tmp_path / "a", "adapter.kind=lora", "train.steps=1")
    # the base trains on: its latest checkpoint (and fingerprint) change
    cfg = make_config("nano", [*QUIET, *SMALL_DATA, "train.steps=9", "train.batch_size=8"])
    base = Trainer(cfg, moved)
    base.restore_or_init()
    base.train()
    with pytest.raises(commands.CheckpointError, match="changed since this adapter was trained"):
        load_run(tmp_path / "a")


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.d_model=96"], "fine-tuning keeps the base's shape"),
        (["adapter.kind=lora", "adapter.targets=qq"], "valid targets: q, k, v"),
        (["adapter.kind=lora", "adapter.rank=0"], "adapter.rank must be >= 1"),
        (
            ["adapter.kind=lora", "model.weight_format=nf4", "model.quant_group_size=48"],
            "valid: 32, 64",
        ),
    ],
)
def test_bad_finetune_input_is_one_line_exit_2(base_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", str(base_dir), *args, f"workdir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_input_noise_is_a_finetune_setting(base_dir):
    """NEFTune / span masking regularise the fine-tune itself: not a change of the base's shape."""
    from compactlm.train.finetune import finetune_config

    cfg = finetune_config(base_dir, ["model.neftune_alpha=5", "model.span_mask_rate=0.05"])
    assert cfg.model.neftune_alpha == 5.0 and cfg.model.span_mask_rate == 0.05


def test_finetune_has_its_own_schedule_printed_and_kept_on_resume(base_dir, tmp_path, capsys):
    """Not the base's pre-training warm-up (100 steps: a 100-step fine-tune would peak at its
    last step): 10 % of the fine-tune's steps; full fine-tuning at a third of the base's lr;
    optim.* given on the command line wins; a resume with more steps keeps the saved schedule."""
    from compactlm.config import make_config
    from compactlm.train.finetune import finetune_config, schedule_line
    from compactlm.train.optim import make_schedule

    base = make_config("nano")  # what base_dir was trained with (optim untouched there)
    lora = finetune_config(base_dir, ["adapter.kind=lora", "train.steps=100"])
    assert (lora.optim.warmup_steps, lora.optim.lr) == (10, base.optim.lr)
    full = finetune_config(base_dir, ["train.steps=30"])
    assert (full.optim.warmup_steps, full.optim.lr) == (3, pytest.approx(base.optim.lr / 3))
    given = finetune_config(base_dir, ["train.steps=100", "optim.warmup_steps=7", "optim.lr=1"])
    assert (given.optim.warmup_steps, given.optim.lr) == (7, 1.0)
    lr = make_schedule(lora.optim, 100)
    assert float(lr(10)) == pytest.approx(lora.optim.lr) and float(lr(99)) < float(lr(10))

    work = tmp_path / "ft"
    args = [*QUIET, *SMALL_DATA, "adapter.kind=lora", "train.batch_size=8"]
    assert commands.finetune(str(base_dir), [*args, "train.steps=2"], workdir=str(work)) == 0
    assert "schedule: adamw, lr 0.003 peak after 1 warm-up steps, cosine" in capsys.readouterr().out
    resumed = finetune_config(base_dir, [*args, "train.steps=40"], workdir=work)
    assert resumed.optim.warmup_steps == 1  # fixed at the run's start, not 10 % of 40
    assert commands.finetune(str(base_dir), [*args, "train.steps=3"], workdir=str(work)) == 0
    capsys.readouterr()
    warn = finetune_config(base_dir, [*args, "train.steps=5", "optim.warmup_steps=5"])
    assert "warning: optim.warmup_steps=5 >= train.steps=5" in schedule_line(warn)


def test_missing_base_and_packed_merge_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", str(tmp_path / "nope"), f"workdir={tmp_path / 'x'}"])
    assert e.value.code == 2 and "a compactlm run directory?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fmt, extra",
    # (nf4 + double quantization: tests/compress/test_job.py, through the CLI. Plain sparse24
    # is left out: its f32 values survive a dense round trip unchanged, so it could not fail.)
    [("int4", {"quant_zero_point": True}), ("sparse24_int4", {"quant_group_size": 32})],
)  # fmt: skip
def test_a_packed_base_is_copied_bit_for_bit_under_adapters(fmt, extra):
    """transfer_weights from a packed model: the same storage class gets the stored arrays
    themselves (no dequantize → quantize round trip, which would move NF4 / int4 codes)."""
    import dataclasses

    from flax import nnx

    from compactlm.models.config import AdapterConfig, ModelConfig
    from compactlm.models.linear import iter_linears
    from compactlm.models.transfer import storage_vars, transfer_weights
    from compactlm.models.transformer import Transformer

    cfg = ModelConfig(
        vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
        max_seq_len=32, scan_layers=False, weight_format=fmt, **extra,
    )  # fmt: skip
    base = Transformer(cfg, rngs=nnx.Rngs(0))
    lora = AdapterConfig(kind="lora", targets=("all-linear",), rank=2)
    target = Transformer(dataclasses.replace(cfg, adapter=lora), rngs=nnx.Rngs(1))
    transfer_weights(target, base)
    n = 0
    for (_, a), (_, b) in zip(iter_linears(base), iter_linears(target), strict=True):
        for name, var in storage_vars(a).items():
            got = storage_vars(b)[name][...]
            assert got.dtype == var[...].dtype and np.array_equal(got, var[...]), name
            n += 1
    assert n >= 2 * 4 * 2  # two layers × four block linears × at least two arrays
