"""`compactlm report`: mean ± std over seeds against NumPy, paper columns, power-law fit, plots."""

import dataclasses
import json

import numpy as np
import pytest

from compactlm.experiments import report
from compactlm.experiments import sweep as sweeps
from compactlm.experiments.report import (
    MIN_REL_SPAN,
    ReportOptions,
    _pm,
    power_law_fit,
    summarize,
    sweep_table,
    write_report,
)
from compactlm.experiments.sweep import Row, Sweep, SweepError, SweepOptions


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


def test_report_without_results_refuses_and_writes_nothing(tmp_path):
    out = tmp_path / "docs"
    opts = ReportOptions(root=str(tmp_path), out=str(out))
    with pytest.raises(SweepError) as e:
        write_report("toy", SPEC, opts)
    message = str(e.value)
    assert "\n" not in message and "sweep toy has no results" in message
    assert f"`compactlm sweep toy root={tmp_path}`" in message and "does not exist yet" in message
    assert not out.exists()
    # Records of command lines the sweep file no longer makes (a row was edited): same refusal.
    _write_results(tmp_path, {"r4": [2.0, 2.1, 2.3]})
    edited = dataclasses.replace(SPEC, common=("train.steps=7",))
    with pytest.raises(SweepError, match="its 3 records in .* are from other command lines"):
        write_report("toy", edited, opts)
    assert not out.exists()


PAPER_SPEC = Sweep(
    title="a long title of a categorical sweep whose plot title used to run past the edge",
    rows=(
        Row(name="rtn-4b", paper={"opt125m_ppl": 37.28}),
        Row(name="gptq-4b", paper={"opt125m_ppl": 31.12}),
        Row(name="gptq-3b", paper={"opt125m_ppl": 53.85}),
    ),
    seeds=3,
    metrics=("bpb", "loss"),
    paper_labels={"opt125m_ppl": "OPT-125M WikiText-2 perplexity (per token)"},
)


def _captured_figures(monkeypatch):
    """Every figure the report saves, inspected before it is closed."""
    seen = {}
    save = report._save

    def spy(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        seen[path.name] = {
            "title": axes[0].title.get_window_extent(renderer),
            "figure": fig.bbox,
            "ylim": axes[0].get_ylim(),
            "legend": [t.get_text() for legend in fig.legends for t in legend.get_texts()],
            "texts": [t.get_text() for t in axes[0].texts],
            "ylabels": [" ".join(ax.get_ylabel().split()) for ax in axes],  # (wrapped)
        }
        return save(fig, path)

    monkeypatch.setattr(report, "_save", spy)
    return seen


def test_paper_metric_is_labelled_and_the_axis_shows_the_scale(tmp_path, monkeypatch):
    """The paper's perplexity is named as such (metric and units) in the table header and the
    plot legend, on its own axis; our axis spans at least MIN_REL_SPAN of the values, so a
    0.008 bpb gap is not drawn as a large one, and the spread is written on the plot; the
    wrapped title fits inside the figure."""
    rows = {"rtn-4b": [2.004, 2.005, 2.006], "gptq-4b": [1.998, 1.997, 1.999], "gptq-3b": [2.0] * 3}
    _write_results(tmp_path, rows, PAPER_SPEC, bytes_of=lambda r: 4000)
    seen = _captured_figures(monkeypatch)
    text = write_report("toy", PAPER_SPEC, ReportOptions(root=str(tmp_path), out=str(tmp_path)))
    label = "OPT-125M WikiText-2 perplexity (per token)"
    head = next(line for line in text.splitlines() if line.startswith("| row |"))
    assert f"| paper: {label} |" in head and "not in ours" in text
    fig = seen["toy_bpb_by_row.png"]
    assert any(f"paper: {label}" in t for t in fig["legend"])
    assert any("bits per byte" in y for y in fig["ylabels"]) and f"paper: {label}" in fig["ylabels"]
    means = [np.mean(v) for v in rows.values()]
    low, high = fig["ylim"]
    assert high - low >= MIN_REL_SPAN * np.mean(means)
    assert low <= min(means) and high >= max(means)
    spread = max(means) - min(means)
    assert any(f"{spread:.4g} bpb" in t for t in fig["texts"])
    for name, f in seen.items():  # no title runs off the figure
        assert f["title"].x0 >= f["figure"].x0 and f["title"].x1 <= f["figure"].x1, name
        assert f["title"].y1 <= f["figure"].y1, name
