"""Ctrl-C and SIGTERM: the flag and its scope, exit codes 130 / 143 through the CLI, nothing
half-written by quantize / export, a second Ctrl-C, a sweep's child. The signals are raised
in-process from a hook (a batch fetch, a compressed block), never by timing a subprocess."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from compactlm import interrupt
from compactlm.config import make_config
from tests.commandline import cli

NANO = [
    "train.steps=3",
    "train.progress=false",
    "train.tensorboard=false",
    "train.eval_every=0",
    "data.corpus=pydocs",
    "mesh.devices=1",
]


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "interrupt_cache"))


def _kill_self(sig: int, times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), sig)


def _signal_in_batch(monkeypatch, sig: int, *, at_step: int = 0, times: int = 1) -> None:
    """Deliver `sig` to ourselves while the loop fetches the batch of `at_step`."""
    from compactlm.train.loop import Trainer

    original = Trainer.batch

    def batch(self, step):
        if step == at_step:
            _kill_self(sig, times)
        return original(self, step)

    monkeypatch.setattr(Trainer, "batch", batch)


# --- the flag --------------------------------------------------------------------------------


def test_flag_check_exit_code_and_second_signal():
    before = signal.getsignal(signal.SIGINT)
    assert interrupt.exit_code("SIGINT") == 130 and interrupt.exit_code("SIGTERM") == 143
    with interrupt.handling():
        interrupt.check("nothing yet")  # no signal: a no-op
        _kill_self(signal.SIGTERM)
        assert interrupt.received() == "SIGTERM"
        with interrupt.handling():  # nested scopes share the flag
            with pytest.raises(interrupt.Interrupted, match="SIGTERM: after block 3") as e:
                interrupt.check("after block 3")
        assert e.value.exit_code == 143
        with pytest.raises(KeyboardInterrupt):  # the second signal does not wait
            _kill_self(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert interrupt.received() is None
    interrupt.check("outside any scope: a no-op")


def test_wait_child_forwards_sigterm_and_raises_after_the_child_exits():
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); "
    code += "print('ready', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(interrupt.Interrupted, match="SIGTERM: the child exited 7"):
        interrupt.wait_child(child)
    child.stdout.close()


# --- training: checkpoint, then 130 / 143 ----------------------------------------------------


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_train_saves_a_checkpoint_then_exits_128_plus_signal(
    tmp_path, monkeypatch, capsys, sig, code
):
    _signal_in_batch(monkeypatch, sig, at_step=0)
    assert cli("train", "nano", *NANO, f"workdir={tmp_path}") == code
    err = capsys.readouterr().err
    name = signal.Signals(sig).name
    assert f"compactlm train: {name}: stopped at step 1; checkpoint saved in" in err, err
    assert "Traceback" not in err
    assert (tmp_path / "checkpoints" / "1").is_dir()
    assert not (tmp_path / "eval.json").exists()  # no report of a half-trained model


def test_second_sigint_exits_130_at_once_with_one_line(tmp_path, monkeypatch, capsys):
    _signal_in_batch(monkeypatch, signal.SIGINT, at_step=0, times=2)
    assert cli("train", "nano", *NANO, f"workdir={tmp_path}") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("interrupted") == 1 and err.rstrip().endswith("compactlm train: interrupted")
    assert not (tmp_path / "checkpoints" / "1").exists()  # it did not wait for the step


# --- quantize / export: stop between blocks, nothing half-written ----------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A nano run trained 3 steps (the same program as the tests above: cached compile)."""
    from compactlm.train.loop import run

    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "interrupt_cache"))
    path = tmp_path_factory.mktemp("interrupt") / "nano"
    run(make_config("nano", NANO), path)
    yield path
    mp.undo()


def test_quantize_stops_at_the_next_block_and_writes_nothing(
    run_dir, tmp_path, monkeypatch, capsys
):
    from compactlm.compress import apply

    original, blocks = apply._compress_block, []

    def compress_block(*args, **kw):  # SIGINT while block 0 is compressed
        blocks.append(len(blocks))
        if len(blocks) == 1:
            _kill_self(signal.SIGINT)
        return original(*args, **kw)

    monkeypatch.setattr(apply, "_compress_block", compress_block)
    out = tmp_path / "int4"
    args = ["group_size=32", "eval_tokens=2048", f"workdir={out}"]
    assert cli("quantize", str(run_dir), *args) == 130
    err = capsys.readouterr().err
    line = f"compactlm quantize: SIGINT: stopped after 1 of 4 blocks; nothing was written to {out}"
    assert line in err and "Traceback" not in err, err
    assert blocks == [0] and not out.exists()


def test_export_stops_before_its_rename_and_leaves_no_directory(
    run_dir, tmp_path, monkeypatch, capsys
):
    from compactlm.interop import hf

    original = hf.hf_tokenizer_json

    def tokenizer_json(tok):  # SIGTERM while the temporary directory is being written
        _kill_self(signal.SIGTERM)
        return original(tok)

    monkeypatch.setattr(hf, "hf_tokenizer_json", tokenizer_json)
    out = tmp_path / "hf"
    assert cli("export", str(run_dir), "format=hf", f"workdir={out}") == 143
    err = capsys.readouterr().err
    line = f"SIGTERM: stopped before the export was moved into place; nothing was written to {out}"
    assert line in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # neither OUT nor its temporary sibling


@pytest.mark.slow  # compiles the masked recovery step (~7 s on 2 busy cores)
def test_prune_recovery_saves_its_checkpoint_then_exits_130(run_dir, tmp_path, monkeypatch, capsys):
    _signal_in_batch(monkeypatch, signal.SIGINT, at_step=0)  # the recovery trainer's first batch
    out = tmp_path / "pruned"
    args = ["method=magnitude", "pattern=2:4", "recover.steps=3", "eval_tokens=2048"]
    assert cli("prune", str(run_dir), *args, f"workdir={out}") == 130
    err = capsys.readouterr().err
    assert "compactlm prune: SIGINT: recovery stopped at step 1 of 3 (checkpoint in" in err, err
    assert f"{out} holds only recover (no finished output)" in err and "Traceback" not in err
    assert (out / "recover" / "checkpoints" / "1").is_dir()
    from compactlm.train.workdir import MARKER

    assert {p.name for p in out.iterdir()} - {MARKER} == {"recover"}  # no compressed run
