"""The override language and config.json round trip, against the dataclasses themselves."""

import itertools

import pytest

from compactlm.commands import SampleConfig
from compactlm.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    diff,
    from_json,
    make_config,
    to_json,
)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_json_round_trip_of_every_preset(preset):
    cfg = make_config(preset)
    assert from_json(to_json(cfg)) == cfg


def test_overrides_parse_against_field_types():
    cfg = make_config(
        "nano",
        ["model.d_model=96", "optim.lr=2e-3", "model.tie_embeddings=false", "train.steps=1e3",
         "data.max_corpus_bytes=1_000_000", "model.head_dim=none", "model.remat=dots"],
    )  # fmt: skip
    assert cfg.model.d_model == 96 and cfg.optim.lr == 2e-3 and cfg.model.tie_embeddings is False
    assert cfg.train.steps == 1000 and cfg.data.max_corpus_bytes == 1_000_000
    assert cfg.model.head_dim is None and cfg.model.remat == "dots"
    assert set(diff(make_config("nano"), cfg)) == {
        "model.d_model", "optim.lr", "model.tie_embeddings", "train.steps",
        "data.max_corpus_bytes", "model.remat",
    }  # fmt: skip


def test_later_overrides_win_and_strings_are_kept_verbatim():
    cfg = make_config("nano", ["optim.lr=1", "optim.lr=0.5"])
    assert cfg.optim.lr == 0.5
    sample = apply_overrides(SampleConfig(), ["prompt=  def f():\n", "top_k= 7 "])
    assert sample.prompt == "  def f():\n" and sample.top_k == 7


@pytest.mark.parametrize(
    "override, message",
    [
        ("model", "is not of the form key.sub=value"),
        ("model=3", "'model' is a section; set one of its fields: model.vocab_size"),
        ("model.d_model.x=3", "'d_model' has no sub-fields"),
        ("train.steps=1.5", "is not an int"),
        ("model.tie_embeddings=maybe", "is not a bool; use true or false"),
        ("data.tokenizer=wordpiece", "choose one of: 'byte' | 'bpe'"),
        ("train.grad_accum=3", "must be divisible by train.grad_accum=3"),
        ("mesh.fsdp=0", "mesh.fsdp must be >= 1"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as info:
        make_config("nano", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_make_train_recipe_is_a_valid_tiny_config():
    # `make train` passes its recipe as overrides: a renamed or retyped field must fail here,
    # not on a new user's first command.
    from pathlib import Path

    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    recipe = next(x for x in makefile.splitlines() if x.startswith("TRAIN_RECIPE :="))
    overrides = recipe.split(":=", 1)[1].split()
    cfg = make_config("tiny", overrides)
    assert cfg.optim.kind == "muon" and cfg.train.eval_every == 0
    assert cfg.data.tokenizer == "bpe" and cfg.train.steps == 600


def test_the_override_parser_imports_no_training_code():
    """compactlm.config composes the sections without the code that reads them: in a fresh
    interpreter, importing it and resolving a preset loads no training loop, step, checkpoint,
    optimizer, mesh, model or kernel module (the config.py <-> train/loop.py cycle stays gone)."""
    import subprocess
    import sys

    probe = (
        "import sys, compactlm.config as c; c.make_config('nano', ['optim.lr=1e-3']); "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('compactlm', 'orbax')))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "compactlm.train.config" in loaded  # the probe saw the sections' module
    heavy = {
        m
        for m in loaded
        if m.startswith(("compactlm.train.", "compactlm.kernels", "compactlm.compress", "orbax"))
        or m
        in (
            "compactlm.models.transformer",
            "compactlm.models.layers",
            "compactlm.evaluation",
            "compactlm.benchmarks",
            "compactlm.experiments",
        )
    }
    assert heavy == {"compactlm.train.config"}, heavy - {"compactlm.train.config"}


def test_overrides_are_validated_together_in_any_order():
    """One combined validation per section: nf4 before quant_group_size=32 (at d_model 96,
    which 64 does not divide) is not refused against the default group size; a repeated key's
    last value wins; an invalid combination names every key of the section it came from."""
    keys = ["model.d_model=96", "model.weight_format=nf4", "model.quant_group_size=32"]
    configs = {make_config("tiny", order).model for order in itertools.permutations(keys)}
    assert len(configs) == 1 and next(iter(configs)).quant_group_size == 32
    assert make_config("tiny", ["model.d_model=96", "model.d_model=64"]).model.d_model == 64
    with pytest.raises(ConfigError, match=r"model.d_model='96', model.weight_format='nf4': nf4"):
        make_config("tiny", ["model.d_model=96", "model.weight_format=nf4"])
