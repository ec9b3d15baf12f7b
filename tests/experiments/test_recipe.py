"""`compactlm recipe` on nano: stage command lines, the table, re-running skips finished stages."""

import json
import shlex
import sys
from pathlib import Path

import pytest

from compactlm.cli import _split_args
from compactlm.experiments.recipe import TRAIN_RECIPE, RecipeConfig, stage_argv
from tests.commandline import cli as _cli


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path_factory.getbasetemp() / "recipe_cache"))


def test_stage_command_lines(tmp_path):
    cfg = RecipeConfig(workdir=str(tmp_path), recover_steps=7, calib_sequences=9)
    pre = stage_argv("pretrain", cfg, "")
    assert pre == ["train", "tiny", *TRAIN_RECIPE, f"workdir={tmp_path / 'pretrain'}"]
    int4 = stage_argv("int4", cfg, "SRC")
    assert int4[:3] == ["quantize", "SRC", "method=gptq"] and "calib.sequences=9" in int4
    assert "scale_dtype=float16" in int4  # Q4_0's d is an f16: the gguf stage keeps every code
    gguf = stage_argv("gguf", cfg, "SRC")  # exports the int4 stage, whatever the source
    assert gguf == ["export", str(tmp_path / "int4"), "format=gguf", "type=auto",
                    f"workdir={tmp_path / 'gguf'}"]  # fmt: skip
    prune = stage_argv("sparse24_int4", cfg, "SRC")
    assert {"pattern=2:4", "quantize.bits=4", "recover.steps=7"} <= set(prune)
    for argv in (int4, prune):  # each line is one the CLI parses: RUN_DIR, overrides, workdir
        run_dir, _, special = _split_args(shlex.split(shlex.join(argv))[1:])
        assert run_dir == "SRC" and special["workdir"].startswith(str(tmp_path))
    with pytest.raises(ValueError, match="unknown stages"):
        RecipeConfig(stages=("pretrain", "fp8"))


def test_pretraining_is_the_main_jobs_recipe():
    # `make train`'s TRAIN_RECIPE and the recipe's default pretraining are one recipe: the
    # Makefile cannot import it (it runs before the venv exists), so this keeps them equal.
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith("TRAIN_RECIPE :="))
    assert tuple(line.split(":=", 1)[1].split()) == TRAIN_RECIPE == RecipeConfig().train_overrides


def test_recipe_on_nano(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the row without llama.cpp; see the end
    work = tmp_path / "recipe"
    args = [
        "recipe",
        "preset=nano",
        f"workdir={work}",
        "train_overrides=train.steps=20,train.eval_every=0,train.progress=false,data.corpus=pydocs",
        "recover_steps=5",
        "group_size=64",
        "calib_sequences=8",
        "eval_tokens=4096",
        "decode_tokens=8",
    ]
    assert _cli(*args) == 0
    out = capsys.readouterr().out
    table = out[out.index("| stage |") :]
    report = json.loads((work / "pretrain" / "eval.json").read_text())
    assert f"| pretrain | 217.66K | 850.2 KiB | {report['bpb']:.4f} | +0.0000 |" in table
    assert f"| gzip -9 (same bytes) | | | {report['baseline/gzip']:.4f} |" in table
    for stage in ("int4", "sparse24_int4"):  # each compression ran, at fewer bytes
        row = next(line for line in table.splitlines() if line.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.split("|")]
        assert cells[2] == "217.66K" and "KiB" in cells[3] and float(cells[4]) > 0, row
    gguf_row = next(line for line in table.splitlines() if line.startswith("| gguf |"))
    size = (work / "gguf" / "model.gguf").stat().st_size
    assert f"| 217.66K | {size / 1024:.1f} KiB | (llama.cpp not installed) |" in gguf_row
    assert (work / "recipe.md").read_text().strip() == table.strip()
    monkeypatch.delitem(sys.modules, "llama_cpp")  # where llama-cpp-python is installed: its row
    assert _cli(*args[:-1], "decode_tokens=0") == 0  # everything is done: nothing runs again
    out2 = capsys.readouterr().out
    assert out.count("done earlier") == 0 and "pretrain: done earlier" in out2
    assert "gguf: done earlier" in out2
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return
    # llama.cpp on the Q4_0 file vs compactlm on the int4 run, same tokens: Δ is its 8-bit
    # activation rounding (docs/deployment.md measures it on tiny: 2e-5 bpb; 0.01 is loose)
    row = next(line for line in out2.splitlines() if line.startswith("| gguf Q4_0, llama.cpp"))
    cells = [c.strip() for c in row.split("|")]
    assert abs(float(cells[5])) < 0.01, row
