"""Text reports: `compactlm info`'s preset table and `compactlm report`'s sweep tables and plots."""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compactlm.experiments.sweep_lm_eval import is_lm_eval
from compactlm.models.footprint import count_params, flops_per_token, memory_estimate


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def info_rows(cfg: Any) -> dict[str, str]:
    """One preset's figures: shape, params, FLOPs/token, memory for training and inference."""
    from compactlm.train.loop import configured_vocab

    cfg = configured_vocab(cfg)
    m, t = cfg.model, cfg.train
    counts = count_params(m)
    flops = flops_per_token(m, t.seq_len)
    mem = memory_estimate(m, batch_size=t.batch_size, seq_len=t.seq_len)
    kv = memory_estimate(m, batch_size=1, seq_len=m.max_seq_len)
    return {
        "shape": f"d={m.d_model} L={m.n_layers} heads={m.n_heads}/{m.n_kv_heads} "
        f"ff={m.d_ff} V={m.vocab_size}",
        "params (total)": _count(counts["total"]),
        "params (non-embedding)": _count(counts["non_embedding"]),
        "train FLOPs/token": _count(flops["train"]),
        "infer FLOPs/token": _count(flops["inference"]),
        "batch (B x T)": f"{t.batch_size} x {t.seq_len}",
        "weights f32": _human(mem["weights/float32"]),
        "weights bf16": _human(mem["weights/bfloat16"]),
        f"weights int4 (g{m.quant_group_size or 'K'})": _human(mem["weights/int4"]),
        f"weights 2:4 ({m.param_dtype} values)": _human(mem["weights/sparse24"]),
        "weights int4+2:4": _human(mem["weights/sparse24_int4"]),
        "AdamW state (f32)": _human(mem["optimizer/adamw"]),
        "activations (no remat)": _human(mem["activations/remat=none"]),
        "activations (remat=block)": _human(mem["activations/remat=block"]),
        "KV cache bf16 (B=1, T=max)": _human(kv["kv_cache/bfloat16"]),
        **_adaptation_rows(cfg, counts),
    }


def _adaptation_rows(cfg: Any, counts: dict[str, int]) -> dict[str, str]:
    """Fine-tuning figures when the config has adapters or a packed base (QLoRA)."""
    from compactlm.models.footprint import base_bits_per_param, weight_bytes

    m = cfg.model
    rows: dict[str, str] = {}
    if m.weight_format == "dense" and m.adapter.kind == "none":
        return rows
    bits = base_bits_per_param(m)
    w = weight_bytes(m)
    base_bytes = w["linear"] + w["other"]
    rows[f"base linears ({m.weight_format})"] = f"{bits:.3f} bits/param"
    rows["base weights (frozen)"] = _human(base_bytes)
    if m.adapter.kind != "none":
        adapter_bytes = w["adapter"] + 8 * counts["adapter"]  # + AdamW's two f32 moments
        rows[f"adapter params ({m.adapter.kind} r{m.adapter.rank})"] = _count(counts["adapter"])
        rows["adapters + AdamW state (f32)"] = _human(adapter_bytes)
        rows["fine-tune weights + optimizer"] = _human(base_bytes + adapter_bytes)
    return rows


def info_table(configs: dict[str, Any]) -> str:
    """Presets side by side, one row per figure."""
    columns = {name: info_rows(cfg) for name, cfg in configs.items()}
    keys = list(next(iter(columns.values())))
    width = max(len(k) for k in keys)
    col_w = {n: max(len(n), *(len(v) for v in c.values())) for n, c in columns.items()}
    lines = [" " * width + "  " + "  ".join(f"{n:>{col_w[n]}}" for n in columns)]
    for k in keys:
        if k == "shape":
            continue
        lines.append(f"{k:<{width}}  " + "  ".join(f"{columns[n][k]:>{col_w[n]}}" for n in columns))
    shapes = "\n".join(f"  {n}: {c['shape']}" for n, c in columns.items())
    return "\n".join(lines) + "\n\nshapes:\n" + shapes


# ---------------------------------------------------------------------------------------------
# Sweep reports: `compactlm report NAME` — mean ± std over seeds, the paper beside, PNG plots.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """Options of `compactlm report NAME`."""

    root: str = "runs/sweeps"  # where the sweep ran (`compactlm sweep ... root=`)
    # Directory for NAME.md and the PNGs (all named after the sweep, so several sweeps can share
    # one, e.g. docs/ablations); empty = ROOT/NAME.
    out: str = ""
    plots: bool = True  # write the PNG plots


def summarize(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation (ddof=1; None for one value), count)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None, 1
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var), n


def _number(x: float) -> str:
    """Counts with thousands separators (1,771,200), other values in %g."""
    return f"{x:,.0f}" if abs(x) >= 1000 and float(x).is_integer() else f"{x:g}"


def _pm(mean: float, std: float | None, digits: int = 4) -> str:
    if not std and float(mean).is_integer():  # a count the seeds agree on (adapter parameters)
        return _number(mean)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def power_law_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least squares of log y = log a − α log x: returns (α, a) for y ≈ a · x^(−α)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(-slope), float(np.exp(intercept))


def row_summaries(sweep: Any, records: Sequence[dict]) -> list[dict[str, Any]]:
    """Per row in file order: its records' metrics summarised over seeds."""
    out = []
    for row in sweep.rows:
        mine = [r for r in records if r["row"] == row.name]
        if not mine:
            continue
        entry: dict[str, Any] = {"row": row, "records": mine, "n": len(mine), "x": row.x}
        if sweep.x_key:  # the swept variable is a recorded figure (parameters, bytes)
            xs = [float(r[sweep.x_key]) for r in mine if sweep.x_key in r]
            entry["x"] = sum(xs) / len(xs) if xs else None
        stderrs = [f"{m}_stderr" for m in sweep.metrics if is_lm_eval(m)]
        for key in (*sweep.metrics, *stderrs, "params", "weight_bytes", "wall_s"):
            values = [
                float(r["metrics"][key]) if key in r["metrics"] else float(r[key])
                for r in mine
                if key in r["metrics"] or key in r
            ]
            entry[key] = summarize(values) if values else None
        out.append(entry)
    return out


def sweep_table(name: str, sweep: Any, records: Sequence[dict]) -> str:
    """The markdown table: one row per sweep row, one column per metric (mean ± std over seeds),
    the paper's number beside ours where the sweep file gives it."""
    rows = row_summaries(sweep, records)
    paper_cols = [m for m in sweep.metrics if any(m in r.paper for r in sweep.rows)]
    extra_paper = sorted({k for r in sweep.rows for k in r.paper} - set(sweep.metrics))
    head = ["row"] + ([sweep.x_label] if sweep.x_label else []) + ["params", "weights"]
    for m in sweep.metrics:
        head.append(m)
        if m in paper_cols:
            head.append(f"paper {m}")
    head += [f"paper: {paper_label(sweep, k)}" for k in extra_paper] + ["seeds", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in rows:
        row = entry["row"]
        cells = [row.name]
        if sweep.x_label:
            cells.append("" if entry["x"] is None else _number(entry["x"]))
        cells.append(_count(entry["params"][0]) if entry["params"] else "")
        cells.append(_human(entry["weight_bytes"][0]) if entry["weight_bytes"] else "")
        for m in sweep.metrics:
            cells.append(_cell(entry, m))
            if m in paper_cols:
                cells.append(f"{row.paper[m]:g}" if m in row.paper else "")
        cells += [f"{row.paper[k]:g}" if k in row.paper else "" for k in extra_paper]
        cells += [str(entry["n"]), f"{entry['wall_s'][0]:.0f}" if entry["wall_s"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r.name for r in sweep.rows if r.name not in {e["row"].name for e in rows}]
    text = "\n".join(lines)
    if any(is_lm_eval(m) for m in sweep.metrics):
        text += (
            "\n\n`lm-eval:TASK/METRIC` columns: lm-eval's METRIC of TASK on each row's run "
            "(`compactlm eval RUN tasks=TASK`), mean ± std over seeds; (s.e.) is lm-eval's own "
            "standard error of the score (for one seed: the sampling error of the task's examples)."
        )
    if extra_paper:
        text += (
            "\n\n`paper:` columns are in the paper's own metric and units (its models, data and "
            "tokenizer), not in ours: compare which row beats which, not the values."
        )
    if missing:
        text += f"\n\nNot run yet: {', '.join(missing)}."
    fit = _fit_line(sweep, rows)
    if fit:
        text += "\n\n" + fit
    return text


def _cell(entry: dict[str, Any], metric: str) -> str:
    """mean ± std over seeds; an lm-eval score adds lm-eval's standard error (its mean over
    seeds), the only spread a single seed has."""
    if not entry[metric]:
        return "—"
    mean, std, _ = entry[metric]
    if not is_lm_eval(metric):
        return _pm(mean, std)
    text = f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"  # (0 and 1 are scores)
    stderr = entry.get(f"{metric}_stderr")
    return f"{text} (s.e. {stderr[0]:.4f})" if stderr else text


def paper_label(sweep: Any, key: str) -> str:
    """A Row.paper key as the paper's metric and units: the sweep file's `paper_labels` entry,
    else from the key's suffix ("opt125m_ppl" → "opt125m perplexity (per token)")."""
    labels = getattr(sweep, "paper_labels", None) or {}
    if key in labels:
        return labels[key]
    prefix, _, suffix = key.rpartition("_")
    what = {
        "ppl": "perplexity (per token, lower is better)",
        "acc": "accuracy (%, higher is better)",
    }.get(suffix)
    return f"{prefix} {what}" if what and prefix else key


# Our metrics' units, for axis labels ("student/bpb" → "student: bits per byte").
_METRIC_UNITS = {
    "bpb": "bits per byte",
    "loss": "loss (nats per token)",
    "ppl": "perplexity (per token)",
}
# lm-eval's metric names ("lm-eval:arc_easy/acc" → "lm-eval arc_easy: accuracy").
_LM_EVAL_UNITS = {
    "acc": "accuracy",
    "acc_norm": "accuracy (length-normalised)",
    "bits_per_byte": "bits per byte",
    "byte_perplexity": "perplexity (per byte)",
    "word_perplexity": "perplexity (per word)",
    "exact_match": "exact match",
}


def metric_label(metric: str) -> str:
    if is_lm_eval(metric):
        task, _, name = metric.removeprefix("lm-eval:").partition("/")
        return f"lm-eval {task}: {_LM_EVAL_UNITS.get(name, name)}"
    where, _, name = metric.rpartition("/")
    label = _METRIC_UNITS.get(name, name)
    return f"{where}: {label}" if where else label


def _fit_line(sweep: Any, rows: Sequence[dict]) -> str:
    """For a log-x sweep with >= 3 points: the fitted power law of the first metric."""
    if not sweep.x_log or not sweep.metrics:
        return ""
    metric = sweep.metrics[0]
    pts = [(e["x"], e[metric][0]) for e in rows if e["x"] and e[metric]]
    if len(pts) < 3 or any(y <= 0 for _, y in pts):
        return ""
    alpha, a = power_law_fit(*zip(*pts, strict=True))
    return (
        f"Least-squares fit over {len(pts)} rows: {metric} ≈ {a:.3g} · ({sweep.x_label})^"
        f"−{alpha:.4f}."
    )


def _file_part(metric: str) -> str:
    """A metric name as part of a file name: nested keys (distill's `student/bpb`) and lm-eval's
    (`lm-eval:arc_easy/acc`) use '-'."""
    return metric.replace("/", "-").replace(":", "-")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)  # (every figure here uses layout="constrained")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _figure(width: float, height: float, title: str) -> tuple[Any, Any]:
    """A constrained-layout figure whose title is wrapped to its width: a sweep's title and
    metric names ran past the edge of a 5.6-inch figure and were clipped."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    # 8 characters per inch: an 11 pt character averages ~0.085 inch, so a line fits with room.
    ax.set_title(textwrap.fill(title, width=max(24, int(width * 8))), fontsize=11)
    return fig, ax


# The smallest y-axis span of a metric plot, as a fraction of the plotted values' mean.
# matplotlib fits the axis to the data, so a 0.008 bpb gap between rows at ~2 bpb (0.4 %) filled
# the whole height and looked like a large effect. An axis from zero would flatten the real
# differences instead (every bpb here lies in 1.6-2.7). 5 % (0.1 bpb at 2 bpb) keeps a gap of
# ~1 % — the size of the effects these sweeps measure, a few seed stds — visible without
# magnifying noise; and the spread itself is written on the plot, in units and percent.
MIN_REL_SPAN = 0.05


def honest_ylim(values: Sequence[float], errors: Sequence[float] = ()) -> tuple[float, float]:
    """(bottom, top) covering the values (± errors) and at least MIN_REL_SPAN of their mean."""
    errors = list(errors) or [0.0] * len(values)
    lo = min(v - e for v, e in zip(values, errors, strict=True))
    hi = max(v + e for v, e in zip(values, errors, strict=True))
    need = MIN_REL_SPAN * abs(math.fsum(values) / len(values))
    pad = max(need - (hi - lo), 0.0) / 2
    margin = 0.08 * max(hi - lo, need) or 1.0  # (all values 0: any visible span)
    return lo - pad - margin, hi + pad + margin


def _annotate_spread(ax: Any, metric: str, values: Sequence[float]) -> None:
    spread, mean = max(values) - min(values), math.fsum(values) / len(values)
    pct = f" ({100 * spread / abs(mean):.1f} % of the mean)" if mean else ""
    ax.text(
        0.02,
        0.98,
        f"spread of the means: {spread:.4g} {metric}{pct}",
        transform=ax.transAxes,
        va="top",
        fontsize=7,
        color="0.3",
    )


def _legend(fig: Any, handles: Sequence[Any]) -> None:
    """Below the axes, where it covers no point (constrained layout makes room)."""
    fig.legend(handles=list(handles), loc="outside lower center", fontsize=7, frameon=False)


def _paper_series(ax: Any, sweep: Any, points: Sequence[tuple[float, str]]) -> list:
    """The first paper key's values on a right-hand axis labelled with the paper's own metric
    (a perplexity on our bits-per-byte axis would read as our number); its legend handles."""
    keys = [k for k in dict.fromkeys(k for r in sweep.rows for k in r.paper)]
    keys = [k for k in keys if k not in sweep.metrics]
    by_name = {r.name: r.paper for r in sweep.rows}
    if not keys:
        return []
    key = keys[0]
    pts = [(x, by_name[name][key]) for x, name in points if key in by_name.get(name, {})]
    if not pts:
        return []
    right = ax.twinx()
    label = f"paper: {paper_label(sweep, key)} (right axis)"
    (handle,) = right.plot(*zip(*pts, strict=True), "x", color="C3", ms=7, label=label)
    values = [v for _, v in pts]
    if min(values) > 0 and max(values) / min(values) > 20:  # GPTQ's RTN 3-bit: 1.3e3 vs ~30
        right.set_yscale("log")
    right.set_ylabel(textwrap.fill(f"paper: {paper_label(sweep, key)}", 36), fontsize=7, color="C3")
    right.tick_params(axis="y", labelsize=7, colors="C3")
    return [handle]


def sweep_plots(name: str, sweep: Any, records: Sequence[dict], out: Path) -> list[Path]:
    """loss curves per row; the first metric vs the swept variable (or per row, for categorical
    rows); the first metric vs bytes of weights when the rows differ in size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from compactlm.train.loop import load_metrics

    rows = row_summaries(sweep, records)
    paths = []
    fig, ax = _figure(6.4, 4.2, f"{name}: training loss")
    drawn = 0
    for entry in rows:
        curves = [load_metrics(r["workdir"]) for r in entry["records"] if r.get("workdir")]
        curves = [[(m["step"], m["train/loss"]) for m in c if "train/loss" in m] for c in curves]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)  # mean over seeds at the steps all of them logged
        steps = [s for s, _ in curves[0][:n]]
        mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(n)]
        ax.plot(steps, mean, label=entry["row"].name, lw=1.2)
        drawn += 1
    if drawn:
        ax.set(xlabel="step", ylabel="train loss (nats/token)")
        ax.legend(fontsize=7, ncol=2)
        paths.append(_save(fig, out / f"{name}_loss.png"))
    else:
        plt.close(fig)
    if not sweep.metrics:
        return paths
    # The first metric, and every lm-eval score after it (accuracy beside bits per byte).
    plotted = [sweep.metrics[0], *(m for m in sweep.metrics[1:] if is_lm_eval(m))]
    for metric in plotted:
        paths += _metric_plots(name, sweep, rows, metric, out)
    return paths


def _metric_plots(name: str, sweep: Any, rows: Sequence[dict], metric: str, out: Path) -> list:
    """One metric vs the swept variable (or per row, for categorical rows), and vs bytes of
    weights when the rows differ in size; the power-law fit only for the first metric."""
    import matplotlib
    import matplotlib.ticker

    paths = []
    pts = [(e["x"], *e[metric][:2], e["row"].name) for e in rows if e["x"] and e[metric]]
    ylabel = f"{metric_label(metric)} (ours)"
    if sweep.x_label and pts:
        fig, ax = _figure(5.6, 4.6, f"{name}: {metric} vs {sweep.x_label}")
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        errs = [p[2] or 0.0 for p in pts]
        line = ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=f"ours: {metric}")
        handles = [line]
        for x, y, _, label in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_ylim(*honest_ylim(ys, errs))
        if sweep.x_log:
            ax.set_xscale("log")
            fit = _fit_line(sweep, rows) if metric == sweep.metrics[0] else ""
            if fit:
                alpha, a = power_law_fit(xs, ys)
                grid = np.geomspace(min(xs), max(xs), 50)
                fit_label = f"fit: α = {alpha:.3f}"
                (curve,) = ax.plot(grid, a * grid**-alpha, "--", lw=1, label=fit_label)
                handles.append(curve)
                ax.set_yscale("log")
                ax.set_ylim(*honest_ylim(ys, errs))
                ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                # 3 digits: a curve spanning 2.43-2.52 (LoRA ranks) printed "2.5" on every tick
                ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        _annotate_spread(ax, metric, ys)
        handles += _paper_series(ax, sweep, [(x, label) for x, _, _, label in pts])
        ax.set(xlabel=sweep.x_label, ylabel=ylabel)
        if len(handles) > 1:
            _legend(fig, handles)
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_vs_x.png"))
    bars = [(e["row"].name, *e[metric][:2]) for e in rows if e[metric]]
    if not sweep.x_label and len(bars) >= 2:  # rows are categories: the metric per row
        title = f"{name}: {metric} per row (± std over seeds)"
        fig, ax = _figure(max(5.6, 0.55 * len(bars) + 2.5), 4.6, title)
        means, errs = [b[1] for b in bars], [b[2] or 0.0 for b in bars]
        # Points, not bars: the axis does not start at zero, and a bar's length would read as
        # the value (a bar twice as tall as another for 0.4 % more bpb).
        line = ax.errorbar(range(len(bars)), means, yerr=errs, fmt="o", capsize=3,
                           label=f"ours: {metric}")  # fmt: skip
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(*honest_ylim(means, errs))
        ref = ax.axhline(means[0], ls="--", lw=0.8, color="gray", label=f"first row: {bars[0][0]}")
        _annotate_spread(ax, metric, means)
        handles = [line, ref, *_paper_series(ax, sweep, [(i, b[0]) for i, b in enumerate(bars)])]
        ax.set(ylabel=ylabel)
        _legend(fig, handles)
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_by_row.png"))
    pts = [
        (e["weight_bytes"][0], e[metric][0], e["row"].name)
        for e in rows
        if e["weight_bytes"] and e[metric]
    ]
    if len({p[0] for p in pts}) >= 2:  # one size for every row (adapters, augmentation): no plot
        fig, ax = _figure(5.6, 4.2, f"{name}: {metric} vs weight bytes")
        ys = [p[1] for p in pts]
        ax.scatter([p[0] for p in pts], ys)
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_ylim(*honest_ylim(ys))
        _annotate_spread(ax, metric, ys)
        ax.set(xlabel="bytes of weights", ylabel=ylabel)
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_vs_bytes.png"))
    return paths


def write_report(name: str, sweep: Any, options: ReportOptions) -> str:
    """NAME.md (+ PNGs) for the sweep's current results; returns the markdown."""
    from compactlm.experiments.sweep import SweepError, current_records, read_results, results_path

    records = current_records(name, sweep, options.root)
    if not records:  # refuse before anything is written: an empty NAME.md reads as a result
        path = results_path(name, options.root)
        stale = len(read_results(path))
        why = (
            f"its {stale} records in {path} are from other command lines (the sweep file "
            "changed since)"
            if stale
            else f"{path} does not exist yet"
        )
        root = "" if options.root == ReportOptions.root else f" root={options.root}"
        raise SweepError(
            f"sweep {name} has no results to report: {why}; run `compactlm sweep {name}{root}` "
            "first (`--dry-run` lists its runs); nothing was written"
        )
    out = Path(options.out or Path(options.root) / name)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"### {name}: {sweep.title}",
        "",
        f"`compactlm sweep {name}` then `compactlm report {name}`; rows:",
        "",
    ]
    parts += ["```"] + [r["command_line"] for r in records if r["seed"] == 0] + ["```", ""]
    parts.append(sweep_table(name, sweep, records))
    if sweep.paper_note:
        parts += ["", f"Paper: {sweep.paper_note}"]
    commits = sorted({_short_commit(r.get("git_commit")) for r in records})
    if commits:
        parts += ["", f"Code version (git): {', '.join(commits)}."]
    if options.plots:
        for path in sweep_plots(name, sweep, records, out):
            parts += ["", f"![{path.stem}]({path.name})"]
    text = "\n".join(parts) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def _short_commit(commit: str | None) -> str:
    if not commit:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
