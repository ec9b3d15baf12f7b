"""Text reports: `compactlm info`'s preset table and `compactlm report`'s sweep tables and plots."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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
        for key in (*sweep.metrics, "params", "weight_bytes", "wall_s"):
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
    head += [f"paper: {k}" for k in extra_paper] + ["seeds", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in rows:
        row = entry["row"]
        cells = [row.name]
        if sweep.x_label:
            cells.append("" if entry["x"] is None else _number(entry["x"]))
        cells.append(_count(entry["params"][0]) if entry["params"] else "")
        cells.append(_human(entry["weight_bytes"][0]) if entry["weight_bytes"] else "")
        for m in sweep.metrics:
            cells.append(_pm(entry[m][0], entry[m][1]) if entry[m] else "—")
            if m in paper_cols:
                cells.append(f"{row.paper[m]:g}" if m in row.paper else "")
        cells += [f"{row.paper[k]:g}" if k in row.paper else "" for k in extra_paper]
        cells += [str(entry["n"]), f"{entry['wall_s'][0]:.0f}" if entry["wall_s"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r.name for r in sweep.rows if r.name not in {e["row"].name for e in rows}]
    text = "\n".join(lines)
    if missing:
        text += f"\n\nNot run yet: {', '.join(missing)}."
    fit = _fit_line(sweep, rows)
    if fit:
        text += "\n\n" + fit
    return text


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
    """A metric name as part of a file name: nested keys (distill's `student/bpb`) use '-'."""
    return metric.replace("/", "-")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
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
        ax.set(xlabel="step", ylabel="train loss (nats/token)", title=f"{name}: training loss")
        ax.legend(fontsize=7, ncol=2)
        paths.append(_save(fig, out / f"{name}_loss.png"))
    else:
        plt.close(fig)
    if not sweep.metrics:
        return paths
    metric = sweep.metrics[0]
    pts = [(e["x"], *e[metric][:2], e["row"].name) for e in rows if e["x"] and e[metric]]
    if sweep.x_label and pts:
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.errorbar(xs, ys, yerr=[p[2] or 0.0 for p in pts], marker="o", capsize=3)
        for x, y, _, label in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if sweep.x_log:
            ax.set_xscale("log")
            fit = _fit_line(sweep, rows)
            if fit:
                alpha, a = power_law_fit(xs, ys)
                grid = np.geomspace(min(xs), max(xs), 50)
                ax.plot(grid, a * grid**-alpha, "--", lw=1, label=f"fit: α = {alpha:.3f}")
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                # 3 digits: a curve spanning 2.43-2.52 (LoRA ranks) printed "2.5" on every tick
                ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
                ax.legend(fontsize=8)
        ax.set(xlabel=sweep.x_label, ylabel=metric, title=f"{name}: {metric} vs {sweep.x_label}")
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_vs_x.png"))
    bars = [(e["row"].name, *e[metric][:2]) for e in rows if e[metric]]
    if not sweep.x_label and len(bars) >= 2:  # rows are categories: the metric per row
        fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(bars) + 1.5), 4.0))
        means = [b[1] for b in bars]
        ax.bar(range(len(bars)), means, yerr=[b[2] or 0.0 for b in bars], capsize=3)
        ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=35, ha="right", fontsize=7)
        spread = max(means) - min(means) or abs(means[0]) * 0.01 or 1.0
        ax.set_ylim(min(means) - spread, max(means) + spread)  # the differences, not the 0 line
        ax.axhline(means[0], ls="--", lw=0.8, color="gray")  # the first row: the reference
        ax.set(ylabel=metric, title=f"{name}: {metric} per row (± std over seeds)")
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_by_row.png"))
    pts = [
        (e["weight_bytes"][0], e[metric][0], e["row"].name)
        for e in rows
        if e["weight_bytes"] and e[metric]
    ]
    if len({p[0] for p in pts}) >= 2:  # one size for every row (adapters, augmentation): no plot
        fig, ax = plt.subplots(figsize=(5.6, 4.0))
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        for x, y, label in pts:
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel="bytes of weights", ylabel=metric, title=f"{name}: {metric} vs weight bytes")
        paths.append(_save(fig, out / f"{name}_{_file_part(metric)}_vs_bytes.png"))
    return paths


def write_report(name: str, sweep: Any, options: ReportOptions) -> str:
    """NAME.md (+ PNGs) for the sweep's current results; returns the markdown."""
    from compactlm.eval.sweep import current_records

    records = current_records(name, sweep, options.root)
    out = Path(options.out or Path(options.root) / name)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        f"### {name}: {sweep.title}",
        "",
        f"`compactlm sweep {name}` then `compactlm report {name}`; rows:",
        "",
    ]
    parts += ["```"] + [r["command_line"] for r in records if r["seed"] == 0] + ["```", ""]
    parts.append(sweep_table(name, sweep, records) if records else "No results yet.")
    if sweep.paper_note:
        parts += ["", f"Paper: {sweep.paper_note}"]
    commits = sorted({_short_commit(r.get("git_commit")) for r in records})
    if commits:
        parts += ["", f"Code version (git): {', '.join(commits)}."]
    if options.plots and records:
        for path in sweep_plots(name, sweep, records, out):
            parts += ["", f"![{path.stem}]({path.name})"]
    text = "\n".join(parts) + "\n"
    (out / f"{name}.md").write_text(text)
    return text


def _short_commit(commit: str | None) -> str:
    if not commit:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
