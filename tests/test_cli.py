"""The command line end to end on `nano`: train → eval → generate, info, dry run, bad input."""

import ast
import json
import re

import pytest

from compactlm.commands import validation_prompt
from compactlm.data import ByteTokenizer, load_corpus, tokenize_documents
from compactlm.data.corpus import Document
from tests.commandline import cli


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "cli_cache"))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "nano", "model.dmodel=3"],
            "unknown config key 'model.dmodel'; valid keys: model.",
        ),
        (["train", "nano", "optim.lr=fast"], "optim.lr='fast' is not a float"),
        (["train", "nano", "model.remat=all"], "choose one of: 'none' | 'block' | 'dots'"),
        (["train", "nano", "model.n_kv_heads=3"], "must be a multiple of n_kv_heads=3"),
        (["train", "huge"], "unknown preset 'huge'; valid presets: nano, tiny, small, base"),
        (["train", "nano", "data.corpus=/no/such/file.txt"], "/no/such/file.txt"),
        (["frobnicate"], "unknown command 'frobnicate'; valid commands: train"),
        (["eval", "/no/such/run"], "a compactlm run directory?"),
        (["generate", "/no/such/run"], "a compactlm run directory?"),
        (["bench", "kernels", "formats=int9"], "unknown formats ['int9']; valid: dense, int4"),
        (["bench", "kernels", "repeats=many"], "repeats='many' is not an int"),
        (["bench", "kernels", "--shapes", "5by5"], "unknown shape '5by5'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, capsys, tmp_path):
    if args[0] == "train":
        args = [*args, f"workdir={tmp_path / 'run'}"]
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_dry_run_prints_config_and_exact_param_count(capsys):
    from compactlm.config import make_config
    from compactlm.models.footprint import count_params
    from compactlm.train.loop import resolve_vocab

    assert cli("train", "nano", "model.d_model=96", "--dry-run") == 0
    out = capsys.readouterr().out
    config = json.loads(out[: out.rindex("}") + 1])
    assert config["model"]["d_model"] == 96 and config["preset"] == "nano"
    expected = count_params(resolve_vocab(make_config("nano", ["model.d_model=96"]), 259).model)
    assert f"parameters: {expected['total']:,}" in out


def test_info_lists_every_preset(capsys):
    assert cli("info") == 0
    out = capsys.readouterr().out
    for name in ("nano", "tiny", "small", "base"):
        assert name in out
    assert "weights int4 (g64)" in out and "KV cache" in out


def test_train_eval_generate_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["train.progress=false", "train.eval_every=0", "data.corpus=pydocs"]
    assert cli("train", "nano", "train.steps=20", *common, f"workdir={run_dir}") == 0
    out = capsys.readouterr().out
    assert "bits per byte (gzip -9)" in out and "sample (prompt" in out
    # The sample starts from the beginning of a validation document of the run's own corpus (the
    # prose of pydocs), not from a fixed "def ": the prompt printed is a prefix of that document,
    # and the sample printed below it continues the prompt.
    header = next(line for line in out.splitlines() if line.startswith("sample (prompt "))
    prompt, doc = re.fullmatch(
        r"sample \(prompt (.+): the start of validation document (.+), temperature .*\):", header
    ).groups()
    prompt, doc = ast.literal_eval(prompt), ast.literal_eval(doc)
    val_ids = json.loads((run_dir / "data.json").read_text())["val_ids"]
    texts = {d.id: d.text for d in load_corpus("pydocs") if d.id in val_ids}
    assert prompt != "def " and doc in texts and texts[doc].startswith(prompt)
    assert out.split(header + "\n", 1)[1].startswith(prompt)
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["bpb"] > 0 and report["baseline/gzip"] > 0
    # The conditional baseline (xz primed with the training split) is labelled as such, and the
    # training split helps xz on its own validation text.
    assert "bits per byte (xz -9e|train)" in out and "given the training split" in out
    assert 0 < report["baseline/xz_given_train"] < report["baseline/xz"]
    for name in ("config.json", "data.json", "metrics.jsonl", "tokenizer.json"):
        assert (run_dir / name).exists(), name

    # eval prints the same numbers from the checkpoint, beside the compressors.
    assert cli("eval", str(run_dir)) == 0
    out = capsys.readouterr().out
    assert f"{report['bpb']:.4f}" in out

    # generate: greedy decoding is deterministic; the prompt is echoed once.
    args = ["generate", str(run_dir), "prompt=The ", "max_new_tokens=12", "temperature=0"]
    assert cli(*args) == 0
    first = capsys.readouterr().out
    assert cli(*args) == 0
    assert capsys.readouterr().out == first and first.startswith("The ")
    assert cli("generate", str(run_dir), "temprature=1") == 2
    assert "valid keys: prompt, max_new_tokens" in capsys.readouterr().err

    # Re-running with more steps resumes from step 20 instead of starting over.
    assert cli("train", "nano", "train.steps=25", *common, f"workdir={run_dir}") == 0
    assert "train.steps 20 -> 25: the learning-rate schedule now decays to step 25" in (
        capsys.readouterr().err
    )
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 25 and steps.count(20) == 1


def test_validation_prompt_is_the_first_ordinary_line_of_a_validation_document():
    import types

    docs = [
        ("blank", "\n\nthe first line is empty"),
        ("tabbed", "\tindented by a tab (not printable)"),
        ("rule", "***\nonly punctuation above"),
        ("prose", "Weight decay by parameter kind, never by module name.\nSecond line"),
        ("later", "Never reached"),
    ]
    tok = ByteTokenizer()
    data = types.SimpleNamespace(
        tokenizer=tok,
        val_tokens=tokenize_documents(tok, [Document(i, t) for i, t in docs]),
        split={"val_ids": [i for i, _ in docs]},
    )
    text = dict(docs)["prose"]
    assert validation_prompt(data) == (
        "Weight decay by parameter kind, never by module name.",
        "prose",
    )
    # Cut to max_bytes at the last whole word (still a prefix of the document).
    prompt, doc = validation_prompt(data, max_bytes=20)
    assert (prompt, doc) == ("Weight decay by", "prose") and text.startswith(prompt)
    # No ordinary first line anywhere: the first non-empty document's start, whatever it is.
    data.val_tokens = tokenize_documents(tok, [Document("tabbed", "\tx\ty")])
    data.split = {"val_ids": ["tabbed"]}
    assert validation_prompt(data) == ("\tx\ty", "tabbed")


@pytest.mark.parametrize("args", [["info"], ["sweep", "lora_targets", "--dry-run"]])
def test_closed_stdout_stops_quietly(args):
    """`compactlm ... | head`: a reader that goes away ends the program without a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COMPACTLM_ALLOCATOR": "system"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "compactlm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_generate_heals_a_bpe_prompt_that_ends_mid_token(tmp_path, capsys):
    # "The " ends in a lone " " token under BPE; healing backs it off and the first new token
    # is one that starts with " ", so the printed text still starts with the whole prompt.
    run_dir = tmp_path / "bpe"
    data = ["data.corpus=pydocs", "data.tokenizer=bpe", "data.bpe_vocab_size=512"]
    common = ["train.progress=false", "train.eval_every=0", "data.max_corpus_bytes=200000"]
    assert cli("train", "nano", "train.steps=10", *data, *common, f"workdir={run_dir}") == 0
    capsys.readouterr()
    for heal in ("true", "false"):
        args = ["prompt=The ", "max_new_tokens=8", "temperature=0", f"heal={heal}"]
        assert cli("generate", str(run_dir), *args) == 0
        assert capsys.readouterr().out.startswith("The ")
