"""`compactlm distill` end to end on nano: resume (with feature distillation's projection),
eval/generate on the output, a frozen teacher, init from the teacher's blocks, and the bad-input
table (one line, exit 2, nothing written)."""

import json
import shutil

import numpy as np
import pytest

from compactlm.train.loop import load_metrics
from compactlm.train.run_dir import run_fingerprint
from tests.commandline import cli as main

# Small and quick: 200 KB of pystdlib, short sequences, a handful of steps.
FAST = [
    "data.max_corpus_bytes=200000",
    "train.batch_size=8",
    "train.seq_len=64",
    "train.eval_every=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=2",
]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill") / "teacher"
    assert main("train", "nano", *FAST, "train.steps=8", f"workdir={path}") == 0
    return path


def test_distill_resume_eval_generate_and_frozen_teacher(teacher, tmp_path, capsys):
    before = run_fingerprint(teacher)
    out = tmp_path / "student"
    args = [
        "distill",
        str(teacher),
        "nano",
        *FAST,
        "model.n_layers=2",
        # narrower than the teacher (d 64): feature distillation learns a projection per pair,
        # resumed from the checkpoint's extra item; eval / generate see the plain Transformer
        "model.d_model=32",
        "distill.features=l2",
        "distill.feature_layers=1:2,2:4",
        "distill.loss=skl",
        "distill.on_policy=0.5",
        "distill.on_policy_prompt=16",
        "distill.top_k=16",
        f"workdir={out}",
    ]
    assert main(*args, "train.steps=4") == 0
    assert main(*args, "train.steps=6") == 0  # resumes from step 4
    report = capsys.readouterr().out
    assert "distillation report after step 6" in report and "student (distilled)" in report
    metrics = [m for m in load_metrics(out) if "distill/divergence" in m]
    assert [m["step"] for m in metrics] == [2, 4, 6]
    assert {"distill/ce", "distill/teacher_ce", "distill/agreement"} <= set(metrics[0])
    assert metrics[-1]["distill/feature"] > 0
    assert (out / "checkpoints" / "6" / "extra").is_dir()
    record = json.loads((out / "distill.json").read_text())
    assert record["teacher_fingerprint"] == before and record["distill"]["loss"] == "skl"
    assert run_fingerprint(teacher) == before  # the teacher's files are bit-identical
    rows = json.loads((out / "eval.json").read_text())
    assert rows["teacher"]["tokens"] == rows["student"]["tokens"]  # one val split
    # the student directory is an ordinary run: eval and generate work on it
    assert main("eval", str(out)) == 0
    assert main("generate", str(out), "max_new_tokens=5") == 0
    # a changed teacher is refused on resume
    assert main(*args, "train.steps=8", "distill.loss=rkl") == 2
    assert "distill.loss: saved 'skl', now 'rkl'" in capsys.readouterr().err


def test_init_from_teacher_from_the_cli_takes_every_other_block(teacher, tmp_path):
    """`distill.init_from_teacher=true`: a 2-layer student starts as the 4-layer teacher's blocks
    0 and 2 (DistilBERT); lr 1e-9 keeps one step's update below 1e-8."""
    from compactlm.train.program import load_model

    out = tmp_path / "student"
    args = ["distill", str(teacher), "nano", *FAST, "model.n_layers=2", "optim.lr=1e-9"]
    assert main(*args, "distill.init_from_teacher=true", "train.steps=1", f"workdir={out}") == 0
    _, student = load_model(out)
    _, full = load_model(teacher)
    # nano's blocks are scanned: kernels stacked on a leading layer axis
    np.testing.assert_allclose(
        np.asarray(student.layers.mlp.down_proj.kernel[...]),
        np.asarray(full.layers.mlp.down_proj.kernel[...])[[0, 2]],
        atol=1e-8,
    )
    np.testing.assert_allclose(student.embedding[...], full.embedding[...], atol=1e-8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.loss=kld"], "choose one of: 'fkl' | 'rkl' | 'jsd' | 'skl' | 'srkl' | 'tvd'"),
        (["distill.beta=1.5"], "distill.beta must be in [0, 1]"),
        (["distill.alpha=-0.5"], "distill.alpha must be in [0, 1]"),
        (["distill.on_policy=2"], "distill.on_policy must be in [0, 1]"),
        (["distill.temperature=0"], "distill.temperature must be > 0"),
        (["distill.top_k=1000"], "distill.top_k=1000 exceeds the vocabulary size 320"),
        (["data.tokenizer=bpe", "data.bpe_vocab_size=300"], "tokenizers differ: teacher byte"),
        (["distill.init_from_teacher=true", "model.d_ff=128"], "d_ff 128 vs teacher 192"),
        (["distill.features=mse"], "choose one of: 'none' | 'cosine' | 'l2'"),
        (["distill.features=cosine", "distill.feature_layers=5:1"], "pair 5:1 is out of range"),
        (["distill.features=cosine", "distill.feature_layers=1-2"], "STUDENT:TEACHER"),
        (["distill.feature_layers=1:1"], "needs distill.features=cosine or l2"),
        (["distill.features=l2", "distill.feature_weight=-1"], "feature_weight must be >= 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    teacher, tmp_path, capsys, overrides, message
):
    out = tmp_path / "student"
    assert main("distill", str(teacher), "nano", *FAST, *overrides, f"workdir={out}") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_teacher_without_checkpoint(teacher, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(teacher / "config.json", bare / "config.json")
    assert main("distill", str(bare), "nano", f"workdir={tmp_path / 's'}") == 2
    assert "no checkpoint found" in capsys.readouterr().err
    assert main("distill", str(tmp_path / "missing"), f"workdir={tmp_path / 's'}") == 2
    assert "a compactlm run directory?" in capsys.readouterr().err
