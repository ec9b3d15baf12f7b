"""`compactlm report`: mean ± std over seeds against NumPy, paper columns, power-law fit, plots."""

import dataclasses
import json

import numpy as np
import pytest

from compactlm.eval import sweep as sweeps
from compactlm.eval.report import (
    ReportOptions,
    _pm,
    power_law_fit,
    summarize,
    sweep_table,
    write_report,
)
from compactlm.eval.sweep import Row, Sweep, SweepOptions


def test_summarize_is_the_sample_mean_and_std():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        v = rng.normal(2.0, 0.3, size=n).tolist()
        mean, std, count = summarize(v)
        assert count == n
        np.testing.assert_allclose(mean, np.mean(v), rtol=1e-12)
        np.testing.assert_allclose(std, np.std(v, ddof=1), rtol=1e-12)
    assert summarize([1.5]) == (1.5, None, 1)
    with pytest.raises(ValueError):
        summarize([])


def test_power_law_fit_recovers_the_exponent():
    x = np.geomspace(1e4, 3e6, 6)
    alpha, a = power_law_fit(x, 5.0 * x**-0.25)
    np.testing.assert_allclose([alpha, a], [0.25, 5.0], rtol=1e-9)


SPEC = Sweep(
    title="toy table",
    rows=(
        Row(name="r4", x=4, paper={"bpb": 1.9, "acc": 0.81}),
        Row(name="r8", x=8),
        Row(name="r16", x=16),
    ),
    seeds=3,
    metrics=("bpb", "loss"),
    x_label="rank",
    x_log=True,
    paper_note="rank barely matters",
)


def _write_results(root, values, spec=SPEC, bytes_of=lambda row: 500 * int(row[1:])):
    """Records as run_sweep writes them (same argv as the plan), with metrics.jsonl curves."""
    path = sweeps.results_path("toy", root)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [
        r for r in sweeps.plan("toy", spec, SweepOptions(root=str(root))) if r.row.name in values
    ]
    with path.open("w") as f:
        for run in runs:
            bpb = values[run.row.name][run.seed]
            run.workdir.mkdir(parents=True, exist_ok=True)
            lines = [{"step": s, "train/loss": 3.0 / s**0.1 + bpb} for s in (25, 50, 75)]
            (run.workdir / "metrics.jsonl").write_text(
                "".join(json.dumps(line) + "\n" for line in lines)
            )
            record = {
                "row": run.row.name,
                "seed": run.seed,
                "argv": list(run.argv),
                "command_line": run.command_line,
                "metrics": {"bpb": bpb, "loss": bpb * 0.69},
                "params": 1000 * (1 + run.seed * 0),
                "weight_bytes": bytes_of(run.row.name),
                "wall_s": 10.0 + run.seed,
                "git_commit": "0123456789abcdef",
                "workdir": str(run.workdir),
            }
            f.write(json.dumps(record) + "\n")
    return runs


def test_table_mean_std_over_seeds_and_paper_column(tmp_path):
    values = {"r4": [2.0, 2.1, 2.3], "r8": [1.8, 1.9, 1.85], "r16": [1.7, 1.7, 1.72]}
    _write_results(tmp_path, values)
    records = sweeps.current_records("toy", SPEC, tmp_path)
    table = sweep_table("toy", SPEC, records)
    head, _, *rows = table.split("\n\n")[0].splitlines()
    assert head.split(" | ")[1:6] == ["rank", "params", "weights", "bpb", "paper bpb"]
    assert "paper: acc" in head
    for line, (name, v) in zip(rows, values.items(), strict=True):
        expected = f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"
        loss = f"{np.mean(v) * 0.69:.4f} ± {np.std(np.array(v) * 0.69, ddof=1):.4f}"
        assert line.startswith(f"| {name} | ") and expected in line and loss in line
    assert "| 1.9 |" in rows[0] and "| 0.81 |" in rows[0]
    alpha, _ = power_law_fit([4, 8, 16], [np.mean(v) for v in values.values()])
    assert f"^−{alpha:.4f}" in table


def test_report_writes_markdown_and_plots(tmp_path):
    values = {"r4": [2.0, 2.1, 2.3], "r8": [1.8, 1.9, 1.85]}  # r16 not run yet
    full = {**values, "r16": [0, 0, 0]}
    runs = _write_results(tmp_path, full)
    path = sweeps.results_path("toy", tmp_path)
    kept = [line for line in path.read_text().splitlines() if '"row": "r16"' not in line]
    path.write_text("\n".join(kept) + "\n")
    out = tmp_path / "docs"
    text = write_report("toy", SPEC, ReportOptions(root=str(tmp_path), out=str(out)))
    assert "Not run yet: r16." in text and "Paper: rank barely matters" in text
    assert runs[0].command_line in text and "0123456789ab" in text
    for png in ("toy_loss.png", "toy_bpb_vs_x.png", "toy_bpb_vs_bytes.png"):
        assert (out / png).stat().st_size > 1000 and f"]({png})" in text
    assert (out / "toy.md").read_text() == text  # named after the sweep: out= may be shared


def test_categorical_rows_get_a_bar_plot_and_equal_sizes_no_bytes_plot(tmp_path):
    """Rows without a swept x (LoRA targets, augmentations) are drawn as one bar per row; a
    metric-vs-bytes plot needs rows of different sizes (here all share 4000 bytes)."""
    spec = dataclasses.replace(SPEC, x_label="", x_log=False)
    _write_results(tmp_path, {"r4": [2.0, 2.1, 2.3], "r8": [1.8, 1.9, 1.85]}, spec, lambda r: 4000)
    out = tmp_path / "docs"
    text = write_report("toy", spec, ReportOptions(root=str(tmp_path), out=str(out)))
    assert (out / "toy_bpb_by_row.png").stat().st_size > 1000 and "](toy_bpb_by_row.png)" in text
    assert not (out / "toy_bpb_vs_bytes.png").exists() and not (out / "toy_bpb_vs_x.png").exists()


def test_counts_the_seeds_agree_on_print_as_counts():
    assert _pm(8192.0, 0.0) == "8,192" and _pm(12.0, None) == "12"
    assert _pm(2.5, None) == "2.5000" and _pm(8192.0, 1.5) == "8192.0000 ± 1.5000"
