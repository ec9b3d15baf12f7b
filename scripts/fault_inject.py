"""Fault injection for training runs: kill -9 at random points (also inside checkpoint saves),
a corrupted or truncated latest checkpoint, a file-size limit during a save, two trainers on one
run directory. Every run is a separate process on the `nano` preset (one device).

    .venv/bin/python scripts/fault_inject.py --trials 20 [--seed 0] [--report docs/reliability.md]

A kill trial runs the training, SIGKILLs it (after a random number of logged steps, or a random
delay after a checkpoint save began), then re-runs the same command until it finishes. It passes
when the re-run started from the newest complete checkpoint on disk at the kill and every loss it
logged — the steps logged twice around the restart included — equals the uninterrupted reference
run's bit for bit. tests/train/test_faults.py runs a few trials of each kind in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 24, 4  # a checkpoint every 4 steps: 6 saves per run, kills land in many phases
BASE = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.eval_every=0",
    "train.log_every=1",
    f"train.checkpoint_every={EVERY}",
    "train.keep_checkpoints=3",
    "data.corpus=pydocs",
    "mesh.devices=1",
]


# --- the child process ------------------------------------------------------------------------


def child(argv: list[str]) -> int:  # noqa: C901 (one flag, one patch)
    """`fault_inject.py child [--kill-in-save N:MS] [--fsize B] [--stop-at S] WORKDIR k=v ...`.

    Trains nano in WORKDIR (compactlm.train.loop.run, no eval or sample) and writes
    WORKDIR/../summary.json. --kill-in-save N:MS: SIGKILL itself MS milliseconds after the N-th
    checkpoint save of this process began. --fsize: RLIMIT_FSIZE for every file it writes.
    --stop-at S: SIGTERM itself at step S (the loop saves step S + 1 and returns), so that a
    partial run has the same config (train.steps sets the LR schedule) as the reference.
    """
    p = argparse.ArgumentParser(prog="fault_inject.py child")
    p.add_argument("--kill-in-save", default="")
    p.add_argument("--fsize", type=int, default=0)
    p.add_argument("--stop-at", type=int, default=-1)
    p.add_argument("workdir")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    from compactlm.commands import USER_ERRORS
    from compactlm.config import make_config
    from compactlm.train import checkpoint as ckpt
    from compactlm.train import loop

    markers = Path(args.workdir).parent / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    original_save, calls = ckpt.save, [0]

    def save(manager, step, *a, **kw):
        calls[0] += 1
        (markers / f"save-begin-{step}").touch()
        if args.kill_in_save and calls[0] == int(args.kill_in_save.split(":")[0]):
            delay = float(args.kill_in_save.split(":")[1]) / 1000
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        out = original_save(manager, step, *a, **kw)
        (markers / f"save-end-{step}").touch()
        return out

    ckpt.save = save
    if args.stop_at >= 0:  # SIGTERM while fetching that step's batch: save after it and exit
        original_batch = loop.Trainer.batch

        def batch(self, step):
            if step == args.stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return original_batch(self, step)

        loop.Trainer.batch = batch
    cfg = make_config("nano", [*BASE, *args.overrides])
    if args.fsize:
        # Data caches are written by the first (unlimited) run; only the checkpoint's files are
        # big enough to hit the limit.
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize, resource.RLIM_INFINITY))
    try:
        trainer = loop.run(cfg, args.workdir)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    (Path(args.workdir).parent / "summary.json").write_text(json.dumps(trainer.summary))
    return 0


# --- the parent: trials -----------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def start(workdir: Path, *flags: str, steps: int | None = None) -> subprocess.Popen:
    """The child on workdir; every run of a trial uses the same train.steps (same schedule)."""
    (workdir.parent / "summary.json").unlink(missing_ok=True)  # written by a run that finishes
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", *flags, str(workdir)]
    return subprocess.Popen(
        [*cmd, f"train.steps={steps or STEPS}"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 1800) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def losses(workdir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every record in metrics.jsonl, in order, duplicates kept."""
    from compactlm.train.loop import load_metrics

    return [(m["step"], m["train/loss"]) for m in load_metrics(workdir) if "train/loss" in m]


def complete_steps(workdir: Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def reference(root: Path) -> dict[int, float]:
    """The uninterrupted run's loss per step."""
    work = root / "reference" / "run"
    code, err = finish(start(work))
    if code:
        raise RuntimeError(f"reference run failed ({code}): {err[-2000:]}")
    return dict(losses(work))


def _logged(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def kill_trial(root: Path, ref: dict[int, float], rng: random.Random, mode: str) -> dict:
    """One kill -9 (mode "steps": after a random number of logged steps; "save": a random delay
    into a random checkpoint save), then a clean re-run; the checks described at the top."""
    trial = root / f"kill-{mode}-{rng.randrange(10**9)}"
    work = trial / "run"
    if mode == "save":
        n, ms = rng.randint(1, STEPS // EVERY - 1), rng.uniform(0, 150)
        proc = start(work, "--kill-in-save", f"{n}:{ms:.1f}")
        finish(proc)
    else:
        target = rng.randint(1, STEPS - 1)
        proc = start(work)
        while proc.poll() is None and _logged(work) < target:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        finish(proc)
    killed = proc.returncode == -signal.SIGKILL
    markers = {p.name for p in (trial / "markers").glob("save-*")}
    in_save = any(m.replace("begin", "end") not in markers for m in markers if "begin" in m)
    on_disk = complete_steps(work)
    expected_start = on_disk[-1] if on_disk else 0
    code, err = finish(start(work))
    summary = json.loads((trial / "summary.json").read_text()) if code == 0 else {}
    records = losses(work)
    mismatched = [(s, v, ref.get(s)) for s, v in records if ref.get(s) != v]
    ok = (
        code == 0
        and summary.get("start_step") == expected_start
        and summary.get("step") == STEPS
        and sorted({s for s, _ in records}) == list(range(1, STEPS + 1))
        and not mismatched
    )
    return {
        "kind": f"kill -9 ({mode})",
        "killed": killed,
        "in_save": in_save,
        "resumed_from": summary.get("start_step"),
        "expected": expected_start,
        "ok": ok,
        "detail": "" if ok else f"rc={code} mismatched={mismatched[:3]} {err[-500:]}",
    }


def corrupt_trial(root: Path, ref: dict[int, float], rng: random.Random) -> dict:
    """Truncate or overwrite every data file of the latest checkpoint, or change 64 bytes of one
    in place; the re-run must name it, fall back to the previous one, finish equal to the
    reference and delete nothing."""
    trial = root / f"corrupt-{rng.randrange(10**9)}"
    work = trial / "run"
    stop_at = rng.choice(range(2 * EVERY, STEPS, EVERY))
    code, err = finish(start(work, "--stop-at", str(stop_at - 1)))  # saves stop_at, stops
    assert code == 0, err
    latest = work / "checkpoints" / str(stop_at)
    files = [p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
    how = rng.choice(["truncate", "garbage", "in place"])
    if how == "in place":  # sizes kept, orbax still decodes it: only the digest can tell
        files = [max((f for f in files if f.parent.name == "d"), key=lambda f: f.stat().st_size)]
    for f in files:
        if how == "truncate":
            with f.open("r+b") as fh:
                fh.truncate(f.stat().st_size // 2)
        elif how == "in place":
            with f.open("r+b") as fh:
                fh.seek(f.stat().st_size // 2)
                fh.write(os.urandom(64))
        else:
            f.write_bytes(os.urandom(f.stat().st_size))
    before = {p.relative_to(work) for p in (work / "checkpoints").rglob("*") if p.is_file()}
    code, err = finish(start(work))
    summary = json.loads((trial / "summary.json").read_text()) if code == 0 else {}
    kept = work / "unreadable_checkpoints"
    moved = sorted(kept.iterdir()) if kept.is_dir() else []
    after = {p.relative_to(work) for p in work.rglob("*") if p.is_file()}
    moved_files = {
        Path("checkpoints") / str(stop_at) / p.relative_to(moved[0])
        for p in (moved[0].rglob("*") if moved else [])
        if p.is_file()
    }
    still_there = {f for f in before if f in after or f in moved_files}
    # Older checkpoints can be rotated out by keep_checkpoints=3 as the run goes on: that is
    # the configured retention, not loss. The unreadable one must survive (moved aside).
    records = losses(work)
    ok = (
        code == 0
        and f"checkpoint step {stop_at}" in err
        and summary.get("start_step") == stop_at - EVERY
        and len(moved) == 1
        and {f for f in before if str(f).startswith(f"checkpoints/{stop_at}/")} <= still_there
        and all(ref.get(s) == v for s, v in records)
    )
    return {
        "kind": f"corrupt latest checkpoint ({how})",
        "killed": False,
        "in_save": False,
        "resumed_from": summary.get("start_step"),
        "expected": stop_at - EVERY,
        "ok": ok,
        "detail": "" if ok else f"rc={code} {err[-800:]}",
    }


def fsize_trial(root: Path, ref: dict[int, float], rng: random.Random) -> dict:
    """RLIMIT_FSIZE smaller than the checkpoint: the save fails with a one-line error (exit 2),
    the previous checkpoint stays intact, and a re-run without the limit finishes as the ref."""
    trial = root / f"fsize-{rng.randrange(10**9)}"
    work = trial / "run"
    code, err = finish(start(work, "--stop-at", str(EVERY - 1)))
    assert code == 0, err
    before = {
        p.relative_to(work): p.read_bytes()
        for p in (work / "checkpoints").rglob("*")
        if p.is_file()
    }
    code_limited, err_limited = finish(start(work, "--fsize", str(64 * 1024)))
    intact = all((work / rel).read_bytes() == data for rel, data in before.items())
    clear = "could not save checkpoint step" in err_limited and "Traceback" not in err_limited
    code, err = finish(start(work))
    summary = json.loads((trial / "summary.json").read_text()) if code == 0 else {}
    ok = (
        code_limited == 2
        and clear
        and intact
        and code == 0
        and summary.get("start_step") == EVERY
        and all(ref.get(s) == v for s, v in losses(work))
    )
    return {
        "kind": "file-size limit during a save",
        "killed": False,
        "in_save": True,
        "resumed_from": summary.get("start_step"),
        "expected": EVERY,
        "ok": ok,
        "detail": "" if ok else f"rc={code_limited} {err_limited[-800:]}",
    }


def lock_trial(root: Path, rng: random.Random) -> dict:
    """Two trainers on one run directory at once: the second exits 2 naming the holder."""
    work = root / f"lock-{rng.randrange(10**9)}" / "run"
    first = start(work, steps=400)
    while first.poll() is None and _logged(work) < 1:
        time.sleep(0.01)
    code, err = finish(start(work, steps=400))
    first.send_signal(signal.SIGKILL)
    finish(first)
    ok = code == 2 and "is in use by another process (pid" in err
    return {
        "kind": "second trainer on the same run directory",
        "killed": False,
        "in_save": False,
        "resumed_from": None,
        "expected": None,
        "ok": ok,
        "detail": "" if ok else f"rc={code} {err[-500:]}",
    }


def run_trials(n_kill: int, seed: int, root: Path, *, extra: bool = True) -> list[dict]:
    rng = random.Random(seed)
    ref = reference(root)
    results = []
    for i in range(n_kill):
        results.append(kill_trial(root, ref, rng, "save" if i % 2 else "steps"))
        print(json.dumps(results[-1]), flush=True)
    if extra:
        for trial in (corrupt_trial, corrupt_trial, fsize_trial):
            results.append(trial(root, ref, rng))
            print(json.dumps(results[-1]), flush=True)
        results.append(lock_trial(root, rng))
        print(json.dumps(results[-1]), flush=True)
    return results


KEEP = "<!-- kept by scripts/fault_inject.py --report: hand-written below -->"


def report(results: list[dict], seconds: float, command: str) -> str:
    kills = [r for r in results if r["kind"].startswith("kill")]
    lines = [
        "# Reliability: fault injection",
        "",
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds:.0f} s, "
        f"`{command}` (nano, {STEPS} steps, a checkpoint every {EVERY}, one CPU device).",
        "",
        "| faults injected | kill -9 | of them inside a checkpoint save | resumed from the "
        "newest complete checkpoint | losses bit-equal to the uninterrupted run | lost |",
        "|---|---|---|---|---|---|",
        f"| {len(results)} | {sum(r['killed'] for r in kills)} | "
        f"{sum(r['in_save'] for r in kills)} | "
        f"{sum(r['resumed_from'] == r['expected'] for r in kills)} / {len(kills)} | "
        f"{sum(r['ok'] for r in kills)} / {len(kills)} | {sum(not r['ok'] for r in results)} |",
        "",
        "| trial | kind | killed | inside a save | resumed from | expected | passed |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| {i} | {r['kind']} | {r['killed']} | {r['in_save']} | {r['resumed_from']} | "
            f"{r['expected']} | {'yes' if r['ok'] else 'NO: ' + r['detail'][:200]} |"
        )
    lines += [
        "",
        "What each kind checks (scripts/fault_inject.py; a few of each run in CI from",
        "tests/train/test_faults.py):",
        "",
        "- **kill -9 (steps)**: SIGKILL once the run has logged a random number of steps; "
        "**(save)**: SIGKILL a random 0-150 ms after a random checkpoint save began (the table "
        "counts the kills that really landed between a save's start and its end). The same "
        "command is re-run: it must start from the newest complete checkpoint on disk at the "
        "kill, and every loss it logs, including the steps logged twice around the restart, "
        "must equal the uninterrupted run's bit for bit.",
        "- **corrupt latest checkpoint**: the latest checkpoint's data files truncated to half or "
        "overwritten with random bytes, or 64 bytes of one changed in place (sizes kept: orbax "
        "still reads it, the digest written at save does not match); the re-run must say which "
        "step is unreadable, resume "
        "from the previous one, move the unreadable one to `unreadable_checkpoints/` (never "
        "delete it) and finish with the reference's losses.",
        "- **file-size limit**: RLIMIT_FSIZE = 64 KiB while saving; the run must exit 2 with "
        "`could not save checkpoint step ...` (no traceback), leave the previous checkpoint "
        "byte-identical, and a re-run without the limit must finish with the reference's losses. "
        "The save checks the limit and the free disk space before writing; a write that still "
        "fails midway (tests/train/test_faults.py simulates ENOSPC) gives the same one-line "
        "error, though orbax's background threads may then print 'Event loop is closed' "
        "tracebacks after it.",
        "- **second trainer**: a second process on a directory that is being trained in exits 2 "
        "naming the holder's pid (an fcntl lock, released by the kernel even on kill -9).",
        "",
        "**lost** counts trials where anything failed: a run that could not resume, resumed "
        "from an older checkpoint than the newest complete one, logged a different loss, or a "
        "checkpoint that was modified or deleted.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "child":
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="kill -9 trials (half inside saves)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default="", help="write the markdown result here")
    args = p.parse_args(argv)
    t0 = time.time()
    root = Path(tempfile.mkdtemp(prefix="compactlm-faults-"))
    os.environ.setdefault("COMPACTLM_CACHE", str(root / "cache"))
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "xla-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    try:
        results = run_trials(args.trials, args.seed, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    command = "python scripts/fault_inject.py " + " ".join(argv)
    text = report(results, time.time() - t0, command.strip())
    print(text)
    if args.report:
        # The fault table is regenerated; what follows KEEP (the invariant, the bad-input
        # classes, written by hand) is kept as it is.
        path = Path(args.report)
        old = path.read_text() if path.is_file() else ""
        kept = old[old.index(KEEP) :] if KEEP in old else ""
        path.write_text(text.rstrip("\n") + "\n\n" + kept if kept else text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
