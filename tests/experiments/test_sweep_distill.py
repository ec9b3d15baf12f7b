"""The distillation sweep files: their rows parse, and a row's own target replaces the sweep's."""

from __future__ import annotations

import pytest

from compactlm.config import apply_overrides, make_config
from compactlm.experiments import sweep as sweeps
from compactlm.experiments.sweep import Row, Sweep


def test_a_rows_target_replaces_the_sweeps_positional_arguments(tmp_path):
    spec = Sweep(
        title="toy",
        command="distill",
        target=("runs/teacher", "nano"),
        rows=(Row(name="a"), Row(name="b", target=("runs/cache_b", "nano"))),
    )
    runs = sweeps.plan("toy", spec, sweeps.SweepOptions(root=str(tmp_path)))
    assert [r.argv[:3] for r in runs] == [
        ("distill", "runs/teacher", "nano"),
        ("distill", "runs/cache_b", "nano"),
    ]


@pytest.mark.parametrize("name", [n for n in sweeps.available() if n.startswith("distill")])
def test_every_distill_sweep_row_parses(name):
    """`compactlm distill`'s own split: distill.* into DistillArgs, the rest into the student's
    config (the generic sweep test skips distill, whose keys are not the Config's)."""
    from compactlm.train.distill_run import DistillArgs, split_overrides

    _, spec = sweeps.load(name)
    for row in spec.rows:
        ours, rest = split_overrides([*spec.common, *row.overrides])
        apply_overrides(DistillArgs(), ours)
        make_config((row.target or spec.target)[-1], rest)
