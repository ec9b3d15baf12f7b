"""A distillation sweep with stored teacher logits against the online teacher, side by side.

    python scripts/bench_distill_cache.py [--root runs/bench_distill_cache] [--steps 150]
        [--seeds 0,1,2] [--losses fkl,jsd] [--top-k 64] [--teacher RUN_DIR]

Trains a `tiny` teacher (unless --teacher is given), then runs every (loss, seed) row of a nano
student twice: online (`compactlm distill TEACHER ... distill.top_k=K`) and from one
`compactlm distill-cache` (built once for all rows, its time counted). Each command runs in its
own process, timed wall to wall (startup and compilation included) and by its training loop
(metrics.jsonl time/wall_s); the last logged train/loss of both must agree to 1e-4 (1e-6 holds
per step, tests/train/test_distill_cache.py; over a 100-step trajectory the one-ulp difference
of the separately compiled teacher forward grows to ~1e-5). Prints a markdown table, the ratio
online / cached with and without the cache build, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COMMON = [
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.progress=false",
    "train.tensorboard=false",
    "distill.alpha=1.0",
    "distill.temperature=1.0",
]


def compactlm(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "compactlm", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def last_metrics(workdir: Path) -> dict:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/bench_distill_cache")
    ap.add_argument("--teacher", default="")
    ap.add_argument("--teacher-steps", type=int, default=100)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--losses", default="fkl,jsd")
    ap.add_argument("--top-k", type=int, default=64)
    a = ap.parse_args()
    root = Path(a.root)
    load_before = os.getloadavg()
    seeds, losses = a.seeds.split(","), a.losses.split(",")
    teacher = Path(a.teacher) if a.teacher else root / "teacher"
    if not a.teacher and not (teacher / "checkpoints").is_dir():
        t = compactlm("train", "tiny", f"train.steps={a.teacher_steps}", *COMMON[:4],
                      f"workdir={teacher}")  # fmt: skip
        print(f"teacher: tiny, {a.teacher_steps} steps, {t:.0f} s")
    cache = root / "cache"
    build = compactlm("distill-cache", str(teacher), f"top_k={a.top_k}", f"steps={a.steps}",
                      f"seeds={a.seeds}", "temperatures=1", f"workdir={cache}")  # fmt: skip
    size = sum(p.stat().st_size for p in cache.glob("*.npy"))
    rows = []
    for loss in losses:
        for seed in seeds:
            args = ["nano", f"train.steps={a.steps}", f"train.seed={seed}", *COMMON,
                    f"distill.loss={loss}"]  # fmt: skip
            on, off = root / "online" / f"{loss}_s{seed}", root / "cached" / f"{loss}_s{seed}"
            t_on = compactlm("distill", str(teacher), *args, f"distill.top_k={a.top_k}",
                             f"workdir={on}")  # fmt: skip
            t_off = compactlm("distill", str(cache), *args, f"workdir={off}")
            m_on, m_off = last_metrics(on), last_metrics(off)
            diff = abs(m_on["train/loss"] - m_off["train/loss"])
            rows.append((loss, seed, t_on, m_on["time/wall_s"], t_off, m_off["time/wall_s"], diff))
            print(
                f"{loss} seed {seed}: online {t_on:.1f} s, cached {t_off:.1f} s, |dloss| {diff:.1e}"
            )
    print(f"\ncache: {build:.1f} s to build, {size / 1e6:.1f} MB\n")
    print(
        "| row | online: wall s (loop s) | cached: wall s (loop s) | final loss, online − cached |"
    )
    print("|---|---|---|---|")
    for loss, seed, t_on, l_on, t_off, l_off, diff in rows:
        on_s, off_s = f"{t_on:.1f} ({l_on:.1f})", f"{t_off:.1f} ({l_off:.1f})"
        print(f"| {loss} seed {seed} | {on_s} | {off_s} | {diff:.1e} |")
    on_total = sum(r[2] for r in rows)
    off_total = sum(r[4] for r in rows)
    on_loop, off_loop = sum(r[3] for r in rows), sum(r[5] for r in rows)
    with_build = off_total + build
    print(
        f"\nonline {on_total:.0f} s; cached {off_total:.0f} s ({on_total / off_total:.2f}x) "
        f"+ build {build:.0f} s = {with_build:.0f} s ({on_total / with_build:.2f}x) "
        f"(training loops alone: {on_loop:.0f} s vs {off_loop:.0f} s, {on_loop / off_loop:.2f}x)"
    )
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    worst = max(r[6] for r in rows)
    print(f"largest final-loss difference: {worst:.1e}")
    assert worst <= 1e-4, "cached and online losses differ"


if __name__ == "__main__":
    main()
