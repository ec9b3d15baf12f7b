"""Plot validation bits/byte against wall time and CPU time for run directories (docs/ figures).

usage: python scripts/plot_train_curve.py RUN_DIR [RUN_DIR ...] --out docs/train_curve.png

Points: the periodic evaluations in metrics.jsonl (rows with eval/bpb; they carry time/wall_s and
time/cpu_s since train() began) and the final full-validation result in eval.json, placed at the
time of the last training row. Horizontal lines: the compressor baselines from eval.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINES = {
    "baseline/gzip": "gzip -9",
    "baseline/bz2": "bzip2 -9",
    "baseline/xz": "xz -9",
    "baseline/xz_given_train": "xz -9e given the training split",
}


def curve(run_dir: Path) -> tuple[list[tuple[float, float, float]], dict]:
    """[(wall_s, cpu_s, bpb)] of a run, and its eval.json."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    points = [
        (r["time/wall_s"], r["time/cpu_s"], r["eval/bpb"])
        for r in rows
        if "eval/bpb" in r and "time/wall_s" in r
    ]
    final = json.loads((run_dir / "eval.json").read_text())
    last = [r for r in rows if "time/wall_s" in r and "train/loss" in r][-1]
    points.append((last["time/wall_s"], last["time/cpu_s"], final["bpb"]))
    return points, final


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="compactlm train tiny on pystdlib (2 CPU cores)")
    a = p.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    final = {}
    for run in a.runs:
        points, final = curve(run)
        for ax, i in zip(axes, (0, 1), strict=True):
            ax.plot([pt[i] for pt in points], [pt[2] for pt in points], "o-", label=run.name)
    xlabels = ("wall seconds (shared machine)", "CPU seconds (user+sys)")
    for ax, xlabel in zip(axes, xlabels, strict=True):
        for key, label in BASELINES.items():
            if key in final:
                ax.axhline(final[key], ls="--", lw=1, color="gray")
                ax.text(
                    ax.get_xlim()[1],
                    final[key],
                    f" {label} {final[key]:.3f}",
                    va="top" if key == "baseline/xz" else "bottom",  # xz and bzip2 sit close
                    fontsize=7,
                    color="gray",
                    ha="right",
                )
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation bits per byte")
    axes[0].legend(fontsize=8)
    fig.suptitle(a.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
