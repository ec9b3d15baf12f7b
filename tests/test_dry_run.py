"""`--dry-run` on every command that writes: the resolved config, what would be written, the
trainable / frozen counts, and nothing written anywhere (compactlm/dry_run.py)."""

import pytest

from compactlm.cli import main
from compactlm.config import make_config
from compactlm.models.footprint import count_params
from tests.files import digests


@pytest.fixture
def run(nano_run):
    return nano_run


def _dry(argv, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--dry-run"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return out


def test_each_writing_command_plans_without_writing(run, tmp_path, capsys):
    before = digests(run.parent)
    nano = count_params(make_config("nano").model)
    rank = 4
    out = _dry(
        ["finetune", str(run), "adapter.kind=lora", f"adapter.rank={rank}", "train.steps=50",
         f"workdir={tmp_path / 'ft'}"],
        capsys,
    )  # fmt: skip
    assert '"kind": "lora"' in out and f"creates {tmp_path / 'ft'}" in out
    # LoRA on q, v (the default targets) of each of nano's layers: r·(K + N) per projection
    m = make_config("nano").model
    head = m.d_model // m.n_heads
    q = rank * (m.d_model + m.n_heads * head)
    v = rank * (m.d_model + m.n_kv_heads * head)
    assert f"trainable: {m.n_layers * (q + v):,} parameters" in out
    assert f"frozen: {nano['total']:,}" in out
    assert "peak after 5 warm-up steps" in out  # the fine-tuning default: 10 % of 50 steps

    out = _dry(["distill", str(run), "nano", f"workdir={tmp_path / 'd'}"], capsys)
    assert '"distill": {' in out and f"frozen teacher: {nano['total']:,} parameters" in out

    out = _dry(
        ["quantize", str(run), "method=rtn", "group_size=32", f"workdir={tmp_path / 'q'}"], capsys
    )
    assert "model.weight_format=int4" in out and f"creates {tmp_path / 'q'}" in out

    out = _dry(["prune", str(run), "method=wanda", f"workdir={tmp_path / 'p'}"], capsys)
    assert "model.weight_format=sparse24" in out

    out = _dry(["recipe", str(run), f"workdir={tmp_path / 'r'}"], capsys)
    assert out.count("compactlm quantize") + out.count("compactlm prune") >= 2

    assert not any((tmp_path / d).exists() for d in ("ft", "d", "q", "p", "r"))
    assert digests(run.parent) == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["quantize", "{run}", "group_size=128", "workdir={tmp}/q"], "does not divide K=64"),
        (["prune", "{run}", "workdir={run}"], "`prune` writes only into a new directory"),
        (["finetune", "{run}", "workdir={run}"], "holds a `compactlm train` run"),
    ],
)
def test_a_dry_run_makes_the_real_commands_checks(run, tmp_path, argv, message, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*(a.format(run=run, tmp=tmp_path) for a in argv), "--dry-run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
