"""The output-directory invariant (train/workdir.py): a command writes only into a new directory
or resumes its own run; everything else is refused in one line before any file changes."""

import json
import os

import pytest

from compactlm.cli import main
from compactlm.config import make_config
from compactlm.train.loop import run as run_training
from compactlm.train.workdir import MARKER, WorkdirError, check_workdir, claim_workdir, held_by
from tests.files import digests

QUIET = ["train.progress=false", "train.eval_every=0", "train.tensorboard=false"]


def _write(path, names):
    path.mkdir(parents=True)
    for name, text in names.items():
        (path / name).write_text(text)


@pytest.mark.parametrize(
    "files, holder",
    [
        ({}, None),
        ({MARKER: json.dumps({"command": "prune"})}, None),  # an attempt that wrote nothing
        ({"config.json": "{}"}, "train"),
        ({"config.json": "{}", "base.json": "{}"}, "finetune"),
        ({"config.json": "{}", "distill.json": "{}"}, "distill"),
        ({"config.json": "{}", "compression.json": json.dumps({"command": "prune"})}, "prune"),
        ({"config.json": "{}", MARKER: json.dumps({"command": "merge"})}, "merge"),
        ({"config.json": "{}", "model.safetensors": ""}, "export"),
        ({"notes.txt": "mine"}, "files"),
    ],
)
def test_what_a_directory_holds(tmp_path, files, holder):
    _write(tmp_path / "d", files)
    assert held_by(tmp_path / "d") == holder


@pytest.mark.parametrize(
    "files, command, allowed",
    [
        ({"config.json": "{}"}, "train", True),  # resume (the config is checked by the trainer)
        ({"config.json": "{}"}, "distill", False),  # the teacher's own directory
        ({"config.json": "{}"}, "finetune", False),
        ({"config.json": "{}"}, "quantize", False),
        ({"config.json": "{}", "distill.json": "{}"}, "distill", True),
        ({"config.json": "{}", "distill.json": "{}"}, "train", False),
        ({"config.json": "{}", "base.json": "{}"}, "finetune", True),
        ({"config.json": "{}", "base.json": "{}"}, "distill", False),
        ({MARKER: json.dumps({"command": "quantize"}), "tokenizer.json": ""}, "quantize", True),
        (
            {MARKER: json.dumps({"command": "quantize"}), "compression.json": "{}"},
            "quantize",
            False,
        ),
        ({MARKER: json.dumps({"command": "merge"}), "config.json": "{}"}, "merge", True),
        ({"notes.txt": "mine"}, "train", False),
    ],
)
def test_which_command_may_write_where(tmp_path, files, command, allowed):
    _write(tmp_path / "d", files)
    if allowed:
        check_workdir(tmp_path / "d", command)
    else:
        with pytest.raises(WorkdirError, match=f"workdir {tmp_path / 'd'} "):
            check_workdir(tmp_path / "d", command)


def test_claim_marks_a_new_directory_and_refuses_a_file(tmp_path):
    claim_workdir(tmp_path / "a" / "b", "prune")
    assert json.loads((tmp_path / "a" / "b" / MARKER).read_text()) == {"command": "prune"}
    assert held_by(tmp_path / "a" / "b") is None  # nothing written yet: still new for anyone
    claim_workdir(tmp_path / "a" / "b", "train")  # and the marker follows the new claimant
    assert json.loads((tmp_path / "a" / "b" / MARKER).read_text()) == {"command": "train"}
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a directory"):
        check_workdir(tmp_path / "f" / "sub", "train")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_an_unwritable_parent_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(WorkdirError, match="is not writable"):
        check_workdir(ro / "run", "train")


@pytest.fixture
def teacher(nano_run):
    return nano_run


@pytest.mark.parametrize(
    "argv, message",
    [
        # the data-loss bug: distill rewrote the teacher's config.json and eval.json
        (["distill", "{t}", "workdir={t}"], "holds a `compactlm train` run; `distill` writes"),
        (["finetune", "{t}", "adapter.kind=lora", "workdir={t}"], "holds a `compactlm train` run"),
        (["quantize", "{t}", "workdir={t}"], "`quantize` writes only into a new directory"),
        (["prune", "{t}", "workdir={t}"], "`prune` writes only into a new directory"),
        (["merge", "{t}", "workdir={t}"], "`merge` writes only into a new directory"),
        (["train", "nano", "workdir={t}/checkpoints"], "holds files that no compactlm command"),
    ],
)
def test_commands_refuse_another_run_without_touching_it(teacher, argv, message, capsys):
    before = digests(teacher)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(t=teacher) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err and "Traceback" not in err
    assert digests(teacher) == before


def test_distill_into_a_plain_training_run_is_refused(teacher, tmp_path, capsys):
    """The second half of the bug: pointed at another training run, distill resumed it as a
    student (config.json rewritten, metrics and a checkpoint appended)."""
    other = tmp_path / "other"
    run_training(make_config("nano", ["train.steps=1", "data.corpus=pydocs", *QUIET]), other)
    before = digests(other)
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(teacher), "nano", "train.steps=1", f"workdir={other}"])
    assert exit_info.value.code == 2
    assert "holds a `compactlm train` run" in capsys.readouterr().err
    assert digests(other) == before
