"""Presets at real shapes (compactlm/config.py REAL_SHAPES): the published architecture, the
published parameter count, shown by `info` and `train --dry-run`.

The reference is scripts/make_real_size_checkpoints.py's PUBLISHED table: each model's Hub
config.json and the parameter count that transformers 5.25.0 computes for a model built from it
(`sum(p.numel() for p in model.parameters())`, checked by that script's `--count` in the dev
venv with torch; these tests need neither)."""

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from compactlm.config import PRESETS, REAL_SHAPES, make_config
from compactlm.experiments.report import _count
from compactlm.interop.hf_config import config_from_hf
from compactlm.models.footprint import count_params
from compactlm.train.loop import configured_vocab
from tests.commandline import cli

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_real_size_checkpoints.py"
# The recipe's fields (how the preset trains and computes), not the architecture's: an import
# keeps the checkpoint's storage dtype and its own defaults for these. init_std too: import
# loads weights and leaves it at the default; it is checked against initializer_range instead.
RECIPE_FIELDS = {"param_dtype", "compute_dtype", "remat", "scan_layers", "init_std"}


def published() -> dict:
    """PUBLISHED of the checkpoint script (which imports torch only inside its functions)."""
    spec = importlib.util.spec_from_file_location("make_real_size_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PUBLISHED


def test_every_real_shape_is_a_preset_with_a_published_reference():
    assert set(REAL_SHAPES) <= set(PRESETS)
    assert set(REAL_SHAPES) <= set(published())


@pytest.mark.parametrize("name", REAL_SHAPES)
def test_parameter_count_is_the_published_one(name):
    """The vocabulary the preset's tokenizer gives (data.bpe_vocab_size, as `info` and `train`
    resolve it) makes the embedding, and so the total, exactly the published count."""
    model = configured_vocab(make_config(name)).model
    assert count_params(model)["total"] == published()[name]["params"]


@pytest.mark.parametrize("name", REAL_SHAPES)
def test_preset_is_the_published_config_as_import_reads_it(name):
    """Every architecture field equals what `compactlm import` makes of the published
    config.json (heads, head_dim, RoPE base and scaling, biases, q/k norms, NoPE layers, eps,
    tying, vocabulary) and the init std is config.json's initializer_range; only the training
    recipe's fields may differ."""
    ours = configured_vocab(make_config(name)).model
    hf = published()[name]["config"]
    theirs = config_from_hf(hf).model
    assert ours.init_std == hf["initializer_range"]
    differ = {
        f.name: (getattr(ours, f.name), getattr(theirs, f.name))
        for f in dataclasses.fields(ours)
        if f.name not in RECIPE_FIELDS and getattr(ours, f.name) != getattr(theirs, f.name)
    }
    differ.pop("head_dim", None)  # None (derived) and an explicit equal value are one shape
    assert ours.resolved_head_dim == theirs.resolved_head_dim
    assert differ == {}


@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-0.5b"])
def test_info_and_dry_run_print_the_count(name, capsys, tmp_path):
    """`info` prints the count (rounded, as for every preset) and the real vocabulary; the train
    dry run prints it exactly."""
    n = published()[name]["params"]
    vocab = published()[name]["config"]["vocab_size"]
    assert cli("info", name) == 0
    out = capsys.readouterr().out
    assert _count(n) in out and f"V={vocab}" in out
    assert cli("train", name, f"workdir={tmp_path / 'run'}", "--dry-run") == 0
    assert f"parameters: {n:,} " in capsys.readouterr().out
