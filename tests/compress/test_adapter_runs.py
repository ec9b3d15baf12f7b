"""Compressing an adapter run: what `quantize` / `prune` report "after" is what `eval OUT` gives.

The bug this pins (issue 17): quantizing a LoRA run reported metrics computed with the adapters,
but wrote a run whose adapters were re-initialised (B = 0), i.e. the base without its fine-tune.
Now an adapter run is merged first (as `compactlm merge ... dequantize=true`), so the written
run is the compressed fine-tuned model and holds no adapters. Every storage of the base (dense;
QLoRA nf4; a packed int4 run from `quantize`; a 2:4 run from `prune`) × every adapter (LoRA,
DoRA) is checked through the real CLI: `eval OUT` on the whole validation split equals the
reported figure.
"""

import json
import re

import pytest

from tests.commandline import cli
from tests.tolerances import tol

QUIET = ["train.progress=false", "train.tensorboard=false", "train.eval_every=0"]
DATA = ["data.corpus=pydocs", "data.max_corpus_bytes=200000"]
# A large fine-tuning learning rate, so that the adapters move the loss far more than the
# tolerance: a run written without them (the bug) cannot pass by accident.
FINETUNE = [*QUIET, "train.steps=8", "optim.lr=5e-2", "optim.warmup_steps=1"]
FAST = ["calib.sequences=4", "calib.batch_size=4"]
ATOL = tol("printed_loss")["atol"]


def eval_loss(run_dir, capsys) -> float:
    capsys.readouterr()
    assert cli("eval", str(run_dir)) == 0
    out = capsys.readouterr().out
    return float(re.search(r"loss \(nats/token\)\s+([0-9.]+)", out).group(1))


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A dense nano run, its int4 (GPTQ-free RTN) and 2:4 compressions: the packed bases."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("adapter_runs")
    mp.setenv("COMPACTLM_CACHE", str(root / "cache"))
    dense = root / "dense"
    assert cli("train", "nano", "train.steps=8", *QUIET, *DATA, f"workdir={dense}") == 0
    assert (
        cli("quantize", str(dense), "method=rtn", "group_size=32", f"workdir={root / 'int4'}") == 0
    )
    assert cli("prune", str(dense), "method=magnitude", f"workdir={root / 'sparse24'}") == 0
    yield root
    mp.undo()


# (base run, fine-tune storage overrides): dense, QLoRA on nf4, adapters on packed int4 / 2:4.
STORAGES = {
    "dense": ("dense", []),
    "nf4": ("dense", ["model.weight_format=nf4", "model.quant_group_size=32"]),
    "int4": ("int4", []),
    "sparse24": ("sparse24", []),
}


@pytest.mark.parametrize("adapter", ["lora", "dora"])
@pytest.mark.parametrize("storage", list(STORAGES))
def test_quantized_adapter_run_evaluates_to_its_reported_after(bases, storage, adapter, capsys):
    base, extra = STORAGES[storage]
    ft = bases / f"ft-{storage}-{adapter}"
    args = [f"adapter.kind={adapter}", "adapter.rank=4", "adapter.alpha=32", *FINETUNE, *extra]
    assert cli("finetune", str(bases / base), *args, f"workdir={ft}") == 0
    finetuned = eval_loss(ft, capsys)
    without = eval_loss(bases / base, capsys)
    assert abs(finetuned - without) > 20 * ATOL, "the fine-tune must move the loss for this test"

    out = bases / f"q-{storage}-{adapter}"
    assert (
        cli("quantize", str(ft), "method=rtn", "format=int4", "group_size=32", f"workdir={out}")
        == 0
    )
    printed = capsys.readouterr().out
    assert f"is a {adapter} adapter run: merging its adapters" in printed
    report = json.loads((out / "compression.json").read_text())
    assert report["merged_adapter"] == adapter
    # "before" is the fine-tuned model (merged = with its adapters, up to f32 rounding)
    assert report["before"]["loss"] == pytest.approx(finetuned, abs=ATOL)
    # the written run is what was measured: eval OUT gives the reported "after"
    assert eval_loss(out, capsys) == pytest.approx(report["after"]["loss"], abs=ATOL)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["adapter"]["kind"] == "none" and cfg["model"]["weight_format"] == "int4"


@pytest.mark.parametrize(
    "storage, adapter, args",
    [
        ("dense", "lora", ["method=wanda", *FAST]),
        ("nf4", "dora", ["method=magnitude", "quantize.group_size=32"]),
    ],
)
def test_pruned_adapter_run_evaluates_to_its_reported_after(bases, storage, adapter, args, capsys):
    base, extra = STORAGES[storage]
    ft = bases / f"ft-{storage}-{adapter}-p"
    ft_args = [f"adapter.kind={adapter}", "adapter.rank=4", "adapter.alpha=32", *FINETUNE, *extra]
    assert cli("finetune", str(bases / base), *ft_args, f"workdir={ft}") == 0
    out = bases / f"p-{storage}-{adapter}"
    assert cli("prune", str(ft), *args, f"workdir={out}") == 0
    report = json.loads((out / "compression.json").read_text())
    assert report["before"]["loss"] == pytest.approx(eval_loss(ft, capsys), abs=ATOL)
    assert eval_loss(out, capsys) == pytest.approx(report["after"]["loss"], abs=ATOL)
