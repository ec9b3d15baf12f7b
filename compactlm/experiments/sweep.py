"""The ablation runner: a sweep file's rows × seeds as resumable command lines, results in JSONL.

A sweep file `configs/sweeps/<name>.py` defines `SWEEP = Sweep(...)`: a base command (train,
finetune, distill, quantize, prune), its positional argument (a preset, or `{base}` for the
shared fixture's run directory), common overrides, rows (each a list of `key=value` overrides —
the one override language of the CLI) and seeds. Every (row, seed) is one command line:

    compactlm train nano train.steps=300 model.d_model=32 train.seed=0 \
        workdir=runs/sweeps/scaling/d32/seed0

`compactlm sweep NAME --dry-run` prints exactly these lines (each marked `# done`, `# failed` or
`# pending`: what a real run would skip or run); the runner executes them one by one
(a child process each, so what ran is what was printed) and appends one record per finished run
to `runs/sweeps/NAME/results.jsonl`: row, seed, argv, resolved config, metrics (the command's
`eval.json`), parameters, wall time, git commit. Re-running skips (row, seed) pairs whose record
has the same argv (`rerun=true` runs them again, e.g. after a fix; the newest record
wins); an interrupted run is re-run with the same command line, and `train` resumes
from its checkpoint; a command that does not resume (quantize, prune: they want a new output
directory) starts again in a fresh one. A command's final metrics are `WORKDIR/eval.json` (train)
or the "after" section of `WORKDIR/compression.json` (quantize, prune). The runner's own files sit
beside the run directory: `seed0.log` (the command's output) and `seed0.sweep.json` (its argv).

A metric `lm-eval:TASK/METRIC` in `metrics` (`"lm-eval:arc_easy/acc"`) is lm-eval's score of each
finished run: the runner then runs `compactlm eval WORKDIR tasks=TASK,... OPTIONS` (the sweep's
`lm_eval` options: include_path=, num_fewshot=, limit=, batch_size=) as a child like the row's
own command, reads `results[TASK]["METRIC,none"]` (and "METRIC_stderr,none") from the JSON it
writes (WORKDIR/lm_eval/results_*.json) into the record's metrics, beside bits per byte. The
record also keeps that eval argv (`lm_eval_argv`) and the metrics asked of it
(`lm_eval_metrics`): a run is done when its record has the row's argv, the same eval argv and
every lm-eval metric asked; a trained run whose evaluation is missing (it failed, was
interrupted, or the metric was added to the sweep file later) is evaluated again without
retraining, and the new record supersedes the old. Task and metric names are checked against
lm-eval's TaskManager before any row runs.

Rows that adapt or compress a model name the shared fixture with `base="tiny"`: a model trained
deterministically once (`FIXTURES`) into `runs/sweeps/_base/<name>` and reused by every sweep;
`{base}` in the positional argument or an override is replaced by that directory.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compactlm.experiments import sweep_lm_eval
from compactlm.experiments.sweep_lm_eval import LM_EVAL_PREFIX
from compactlm.interrupt import Interrupted, wait_child

COMMANDS = ("train", "finetune", "distill", "quantize", "prune")
# Commands that continue a run directory they find (train resumes from its checkpoint); the
# others need an empty output directory, so an unfinished one is removed before a re-run.
RESUMING = ("train", "finetune", "distill")

# The shared base models: command lines like any row. tiny at 600 steps (half the default run,
# ~3-4 minutes on 2 idle cores) is trained enough that adapters and compression have something to
# lose; nano is the test-size base; tiny1200 the finished teacher of the distillation sweeps.
FIXTURES: dict[str, list[str]] = {
    "tiny": ["train", "tiny", "train.steps=600", "train.seed=0", "train.eval_every=0"],
    "nano": ["train", "nano", "train.steps=200", "train.seed=0", "train.eval_every=0"],
    # The distillation teacher: tiny's full default schedule (beats gzip -9; docs/distillation.md).
    "tiny1200": ["train", "tiny", "train.steps=1200", "train.seed=0", "train.eval_every=0"],
}


class SweepError(ValueError):
    """A bad sweep file or option; one line, names what is valid."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """One line of a paper's table: a name and its overrides (on top of the sweep's common ones)."""

    name: str  # row label in results, reports and run-directory names ([A-Za-z0-9_.-])
    overrides: tuple[str, ...] = ()  # `key=value` strings, applied after Sweep.common
    x: float | None = None  # the swept variable's value for "metric vs x" plots (None: no point)
    paper: dict[str, float] = dataclasses.field(default_factory=dict)  # the paper's numbers
    # This row's positional argument(s) in place of Sweep.target (empty: the sweep's): a row
    # that distills from its own teacher or stored cache (configs/sweeps/distill_strength.py).
    target: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_.-" for c in self.name):
            raise SweepError(f"row name {self.name!r}: use letters, digits, '_', '.', '-'")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "target", tuple(self.target))
        for item in self.overrides:
            if "=" not in item:
                raise SweepError(f"row {self.name}: override {item!r} is not key=value")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
    """A sweep file's contents (see the module docstring)."""

    title: str  # the paper table / figure this reproduces, one line
    command: str = "train"  # one of COMMANDS
    # Positional argument(s): a preset, "{base}" (the fixture's run dir), or a tuple of them
    # (distill takes TEACHER_RUN_DIR and the student preset: ("{base}", "nano")).
    target: str | tuple[str, ...] = "nano"
    common: tuple[str, ...] = ()  # overrides shared by every row (before the row's own)
    rows: tuple[Row, ...] = ()
    seeds: int = 1  # seeds per row (0 … seeds-1); `compactlm sweep NAME seeds=3` overrides it
    seed_key: str | None = "train.seed"  # override that sets the seed (None: deterministic cmd)
    workdir_key: str = "workdir"  # the command's run-directory argument
    base: str | None = None  # a FIXTURES name substituted for {base}; None = no shared base
    # Reported columns: eval.json keys, or "lm-eval:TASK/METRIC" (lm-eval's METRIC of TASK on each
    # row's finished run, `compactlm eval RUN tasks=TASK`; docs/evaluation.md).
    metrics: tuple[str, ...] = ("bpb", "loss")
    # Options of that `compactlm eval` beside tasks= (its LmEvalConfig, the same key=value
    # language: "include_path=DIR", "num_fewshot=0", "limit=100", "batch_size=16"); only with an
    # lm-eval metric.
    lm_eval: tuple[str, ...] = ()
    x_label: str = ""  # what Row.x is ("parameters", "LoRA rank"); empty: no metric-vs-x plot
    x_key: str = ""  # take x from this record field instead of Row.x ("params/non_embedding")
    x_log: bool = False  # log-scale x axis (ranks, parameter counts)
    paper_note: str = ""  # what the paper found, one or two sentences, shown under the table
    # What each Row.paper key measures, in the paper's own metric and units, for table headers
    # and plot legends ({"opt125m_ppl": "OPT-125M WikiText-2 perplexity (per token)"}): a paper's
    # perplexity printed beside our bits per byte must say it is another metric. A key without
    # an entry is labelled from its suffix (report.py::paper_label: _ppl, _acc).
    paper_labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise SweepError(f"command {self.command!r}; valid commands: {', '.join(COMMANDS)}")
        if self.base is not None and self.base not in FIXTURES:
            raise SweepError(f"base {self.base!r}; valid fixtures: {', '.join(FIXTURES)}")
        if self.seeds < 1:
            raise SweepError("seeds must be >= 1")
        object.__setattr__(self, "common", tuple(self.common))
        targets = (self.target,) if isinstance(self.target, str) else tuple(self.target)
        object.__setattr__(self, "target", targets)
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "lm_eval", tuple(self.lm_eval))
        self._check_lm_eval()
        names = [r.name for r in self.rows]
        if len(set(names)) != len(names):
            raise SweepError(f"duplicate row names in {names}")
        keys = {k for r in self.rows for k in r.paper}
        unknown = sorted(set(self.paper_labels) - keys)
        if unknown:
            raise SweepError(
                f"paper_labels {unknown} name no row's paper key; keys: {', '.join(sorted(keys))}"
            )

    @property
    def lm_eval_targets(self) -> tuple[tuple[str, str], ...]:
        """(task, metric) of every "lm-eval:TASK/METRIC" in metrics, in order."""
        return sweep_lm_eval.targets(self.metrics)

    def _check_lm_eval(self) -> None:
        """The names' shape and the eval options (cheap: lm-eval is not imported here; task and
        metric names are checked against lm-eval by sweep_lm_eval.check_targets before a run)."""
        try:
            sweep_lm_eval.check_spelling(self.metrics, self.lm_eval)
        except ValueError as e:
            raise SweepError(str(e)) from None

    def eval_argv(self, workdir: Path) -> tuple[str, ...]:
        """`compactlm eval WORKDIR tasks=...` for the lm-eval metrics; () when there are none."""
        tasks = list(dict.fromkeys(t for t, _ in self.lm_eval_targets))
        if not tasks:
            return ()
        return ("eval", str(workdir), f"tasks={','.join(tasks)}", *self.lm_eval)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepOptions:
    """Options of `compactlm sweep NAME` (`seeds=3 only=r8,r16 root=runs/sweeps`)."""

    seeds: int | None = None  # seeds per row (0 … seeds-1); None = the sweep file's value
    only: str = ""  # comma-separated row names to run (empty = all)
    root: str = "runs/sweeps"  # where each sweep's directory (results, run dirs, plots) lives
    # Run the selected rows again from scratch although they have records (their run directories
    # are deleted first; the new record supersedes the old): for results a since-fixed bug made.
    # Use with only=ROW,... (without only=, every row runs again).
    rerun: bool = False

    def __post_init__(self) -> None:
        if self.seeds is not None and self.seeds < 1:
            raise SweepError(
                f"seeds={self.seeds} would run nothing; valid: seeds=1 or more (seeds 0 … N-1), "
                "or leave it out for the sweep file's count"
            )


@dataclasses.dataclass(frozen=True)
class Run:
    """One (row, seed): the argv after `compactlm` and its run directory."""

    row: Row
    seed: int
    argv: tuple[str, ...]
    workdir: Path
    eval_argv: tuple[str, ...] = ()  # `compactlm eval WORKDIR tasks=...` after it (lm-eval metrics)
    lm_eval_targets: tuple[tuple[str, str], ...] = ()  # its (task, metric) pairs

    @property
    def command_line(self) -> str:
        return shlex.join(["compactlm", *self.argv])

    @property
    def eval_line(self) -> str:
        return shlex.join(["compactlm", *self.eval_argv]) if self.eval_argv else ""

    @property
    def log_path(self) -> Path:
        return self.workdir.with_name(self.workdir.name + ".log")

    @property
    def marker_path(self) -> Path:
        return self.workdir.with_name(self.workdir.name + ".sweep.json")


# ---------------------------------------------------------------------------------- loading


def sweep_dirs() -> list[Path]:
    """Where sweep files are looked up: ./configs/sweeps, then the source checkout's."""
    here = Path(__file__).resolve().parents[2] / "configs" / "sweeps"
    dirs = [Path.cwd() / "configs" / "sweeps", here]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def available() -> list[str]:
    names: set[str] = set()
    for d in sweep_dirs():
        names.update(p.stem for p in d.glob("*.py") if not p.name.startswith("_"))
    return sorted(names)


def load(name: str) -> tuple[str, Sweep]:
    """(sweep name, its Sweep) from a name in configs/sweeps or a path to a .py file."""
    if name.endswith(".py"):
        path = Path(name)
        if not path.exists():
            raise FileNotFoundError(f"sweep file {name} not found")
    else:
        path = next((d / f"{name}.py" for d in sweep_dirs() if (d / f"{name}.py").exists()), None)
        if path is None:
            raise SweepError(f"unknown sweep {name!r}; available: {', '.join(available())}")
    sweep = runpy.run_path(str(path)).get("SWEEP")
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path} must define SWEEP = Sweep(...)")
    return path.stem, sweep


# ---------------------------------------------------------------------------------- planning


def fixture_run(name: str, root: str | Path) -> Run:
    argv = FIXTURES[name]
    workdir = Path(root) / "_base" / name
    row = Row(name=f"_base-{name}")
    return Run(row, 0, (*argv, f"workdir={workdir}"), workdir)


def plan(name: str, sweep: Sweep, options: SweepOptions = SweepOptions()) -> list[Run]:
    """Every (row, seed) of the sweep as a Run, in file order (rows outer, seeds inner)."""
    root = Path(options.root)
    rows = sweep.rows
    if options.only:
        wanted = [w.strip() for w in options.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in {r.name for r in rows}]
        if unknown or not wanted:
            what = f"unknown rows {unknown}" if unknown else "names no row (it would run nothing)"
            raise SweepError(
                f"only={options.only}: {what}; rows: " + ", ".join(r.name for r in rows)
            )
        rows = tuple(r for r in rows if r.name in wanted)
    seeds = options.seeds or sweep.seeds
    if sweep.seed_key is None and seeds > 1:
        raise SweepError(f"sweep {name} runs a deterministic command (no seed_key): use seeds=1")
    base = str(fixture_run(sweep.base, root).workdir) if sweep.base else None

    def fill(text: str) -> str:
        if "{base}" in text:
            if base is None:
                raise SweepError(f"sweep {name} uses {{base}} but sets no base fixture")
            return text.replace("{base}", base)
        return text

    runs = []
    for row in rows:
        for seed in range(seeds):
            workdir = root / name / row.name / f"seed{seed}"
            argv = [sweep.command, *(fill(t) for t in (row.target or sweep.target))]
            argv += [fill(o) for o in (*sweep.common, *row.overrides)]
            if sweep.seed_key is not None:
                argv.append(f"{sweep.seed_key}={seed}")
            argv.append(f"{sweep.workdir_key}={workdir}")
            evaluate = sweep.eval_argv(workdir)
            runs.append(Run(row, seed, tuple(argv), workdir, evaluate, sweep.lm_eval_targets))
    return runs


def dry_run_lines(name: str, sweep: Sweep, options: SweepOptions = SweepOptions()) -> list[str]:
    """The exact command lines: the fixture's (when the sweep has one), then every run's, each
    followed by a shell comment saying what the real run would do with it: `# done` (a record
    with this argv: skipped), `# failed (exit N; log: ...)` (its last attempt failed: run
    again) or `# pending`. `rerun=true` runs every line again: all are pending then. A sweep with
    lm-eval metrics prints each run's `compactlm eval WORKDIR tasks=...` on the line after it,
    its comment naming the metrics it gives and its own status."""
    lines = []
    if sweep.base:
        base = fixture_run(sweep.base, options.root)
        status = "done" if read_metrics(base.workdir) is not None else "pending"
        lines.append(f"{base.command_line}  # {status}")
    records = latest_records(results_path(name, options.root))
    targets = ", ".join(m for m in sweep.metrics if m.startswith(LM_EVAL_PREFIX))
    for run in plan(name, sweep, options):
        if options.rerun:
            trained = evaluated = "pending"
        else:
            trained, evaluated = _status(run, records)
        lines.append(f"{run.command_line}  # {trained}")
        if run.eval_argv:
            lines.append(f"{run.eval_line}  # {targets}: {evaluated}")
    return lines


def _status(run: Run, records: dict[tuple, dict[str, Any]]) -> tuple[str, str]:
    """(the run's, its lm-eval's) done / failed (...) / pending, from what run_sweep itself
    reads: results.jsonl for done, the run's marker (WORKDIR.sweep.json, same argv) for the last
    attempt's failure (an lm-eval failure: "lm-eval exit N")."""
    record = records.get((run.row.name, run.seed, run.argv))
    try:
        marker = json.loads(run.marker_path.read_text())
    except (OSError, ValueError):
        marker = {}
    failed = marker.get("failed") if tuple(marker.get("argv", ())) == run.argv else None
    failed = f"failed ({failed}; log: {run.log_path})" if failed else ""
    if record is None:
        return failed or "pending", "pending"
    if _finished(run, record):
        return "done", "done"
    return "done", failed if failed.startswith("failed (lm-eval") else "pending"


def _finished(run: Run, record: dict[str, Any] | None) -> bool:
    """The record is this run's, lm-eval included when the sweep has lm-eval metrics (an older
    record without `lm_eval_argv` still counts where the sweep has none)."""
    if record is None:
        return False
    if not run.eval_argv:
        return True
    wanted = {f"{LM_EVAL_PREFIX}{t}/{m}" for t, m in run.lm_eval_targets}
    return tuple(record.get("lm_eval_argv", ())) == run.eval_argv and wanted <= set(
        record.get("lm_eval_metrics", ())
    )


# ---------------------------------------------------------------------------------- results


def results_path(name: str, root: str | Path) -> Path:
    return Path(root) / name / "results.jsonl"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_records(path: str | Path) -> dict[tuple, dict[str, Any]]:
    """(row, seed, argv) → the newest record with that key."""
    return {(r["row"], r["seed"], tuple(r["argv"])): r for r in read_results(path)}


def done_keys(path: str | Path) -> set[tuple]:
    """(row, seed, argv) of every recorded run: what a re-run skips."""
    return {(r["row"], r["seed"], tuple(r["argv"])) for r in read_results(path)}


def current_records(name: str, sweep: Sweep, root: str | Path) -> list[dict[str, Any]]:
    """The latest record of every planned run whose argv still matches the sweep file.

    Seeds beyond the file's count that were run with `seeds=N` are kept (same argv rule)."""
    records = read_results(results_path(name, root))
    seeds = max([sweep.seeds - 1, *(r["seed"] for r in records)]) + 1 if records else sweep.seeds
    if sweep.seed_key is None:
        seeds = 1
    by_key = {(r["row"], r["seed"], tuple(r["argv"])): r for r in records}
    out = []
    for run in plan(name, sweep, SweepOptions(root=str(root), seeds=seeds)):
        record = by_key.get((run.row.name, run.seed, run.argv))
        if record is not None:
            out.append(record)
    return out


def git_commit() -> str | None:
    """HEAD of the source checkout (suffix -dirty with uncommitted changes); None outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def model_figures(config: dict[str, Any]) -> dict[str, float]:
    """Parameters and bytes of weights of a resolved config.json (dense: as stored, param dtype);
    with adapters also their parameters (`params/adapter`; `params` counts the base alone).

    A packed run (model.weight_format != dense) counts the parameters of its dense architecture;
    its bytes come from the compression command's own report (read_metrics: weight_bytes)."""
    import dataclasses as dc

    from compactlm.config import from_json
    from compactlm.models.footprint import count_params

    model = from_json(json.dumps(config)).model
    dense = model.weight_format == "dense"
    counts = count_params(model if dense else dc.replace(model, weight_format="dense"))
    itemsize = 2 if model.param_dtype == "bfloat16" else 4
    figures = {"params": counts["total"], "params/non_embedding": counts["non_embedding"]}
    if model.adapter.kind != "none":  # what an adapter run trains (not in "params": the base's)
        figures["params/adapter"] = counts["adapter"]
    if dense:
        figures["weight_bytes"] = counts["total"] * itemsize
    return figures


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_metrics(workdir: Path) -> dict[str, Any] | None:
    """A finished run's metrics: eval.json (train and the training commands), else the "after"
    evaluation and the sizes of compression.json (quantize, prune); None while unfinished."""
    if (workdir / "eval.json").exists():  # nested sections (distill: teacher, student) → "a/b"
        return _flatten(json.loads((workdir / "eval.json").read_text()))
    if (workdir / "compression.json").exists():
        report = json.loads((workdir / "compression.json").read_text())
        metrics = dict(report.get("after", {}))
        metrics.update({f"before/{k}": v for k, v in report.get("before", {}).items()})
        sizes = report.get("sizes", {})
        if "model_bytes" in sizes:
            metrics["weight_bytes"] = sizes["model_bytes"]
        metrics.update({f"sizes/{k}": v for k, v in sizes.items() if isinstance(v, int | float)})
        return metrics
    return None


def collect(run: Run, wall_s: float, name: str) -> dict[str, Any]:
    """The results.jsonl record of a finished run, read from its run directory."""
    metrics = read_metrics(run.workdir)
    if metrics is None:
        raise SweepError(f"{run.command_line} finished without writing its metrics")
    config_path = run.workdir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    figures = model_figures(config) if "model" in config else {}
    # A compression command reports the bytes of its packed weights itself.
    figures.update({k: metrics[k] for k in ("weight_bytes", "params") if k in metrics})
    return {
        "sweep": name,
        "row": run.row.name,
        "seed": run.seed,
        "argv": list(run.argv),
        "command_line": run.command_line,
        "metrics": metrics,
        **figures,
        "wall_s": wall_s,
        "git_commit": git_commit(),
        "time": time.time(),
        "workdir": str(run.workdir),
        "config": config,
    }


# ---------------------------------------------------------------------------------- running


def subprocess_execute(argv: Sequence[str], workdir: Path) -> int:
    """Run `python -m compactlm ARGV`, output appended to WORKDIR.log beside it; the exit code.

    Ctrl-C / SIGTERM: the parent waits for the child to save its checkpoint, then raises
    Interrupted (compactlm/interrupt.py::wait_child).
    """
    workdir.parent.mkdir(parents=True, exist_ok=True)
    with workdir.with_name(workdir.name + ".log").open("a") as log:
        log.write(f"$ {shlex.join(['compactlm', *argv])}\n")
        log.flush()
        child = subprocess.Popen(
            [sys.executable, "-m", "compactlm", *argv], stdout=log, stderr=subprocess.STDOUT
        )
        return wait_child(child)


def _claim(run: Run) -> list[str] | None:
    """Mark WORKDIR as this run's (WORKDIR.sweep.json); the other argv if another run owns it.

    A row edited in its sweep file keeps its directory name; resuming the old run directory
    under new overrides would mix two configs (or, with fewer steps, report the old model)."""
    marker = run.marker_path
    if marker.exists() and run.workdir.exists():  # (a marker without its directory is stale)
        argv = json.loads(marker.read_text())["argv"]
        return None if tuple(argv) == run.argv else argv
    if run.workdir.exists() and any(run.workdir.iterdir()):
        return ["<unknown: a directory the sweep did not create>"]
    _mark(run)
    return None


def _mark(run: Run, failed: str | None = None) -> None:
    """WORKDIR.sweep.json: the argv that owns WORKDIR, and why its last attempt failed (if it
    did; `--dry-run` shows it). Rewritten without `failed` when an attempt starts."""
    run.marker_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"argv": list(run.argv), **({"failed": failed} if failed else {})}
    run.marker_path.write_text(json.dumps(record) + "\n")


def _eta(walls: Sequence[float], left: int) -> str:
    """The time the `left` runs still to execute (this one included) take at the mean wall
    time of those this invocation ran; unknown before the first."""
    if not walls:
        return "ETA unknown until a run finishes"
    mean = sum(walls) / len(walls)
    return f"ETA {_duration(mean * left)} ({left} left at {_duration(mean)} each)"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_sweep(
    name: str,
    sweep: Sweep,
    options: SweepOptions = SweepOptions(),
    *,
    execute: Callable[[Sequence[str], Path], int] = subprocess_execute,
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every unfinished (row, seed), then its lm-eval (lm-eval metrics); returns counts ran,
    skipped, failed.

    A signal (Interrupted from `execute`): the summary line, then Interrupted (exit 130 / 143);
    re-running the same sweep resumes it."""
    runs = plan(name, sweep, options)
    path = results_path(name, options.root)
    records = {} if options.rerun else latest_records(path)
    # Runs still to execute (for the ETA): the planned ones without a (complete) record.
    todo = [not _finished(r, records.get((r.row.name, r.seed, r.argv))) for r in runs]
    if sweep.lm_eval_targets and any(todo):
        try:  # before the base fixture and any row trains
            sweep_lm_eval.check_targets(sweep.lm_eval_targets, sweep.lm_eval)
        except ValueError as e:
            raise SweepError(str(e)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = {"ran": 0, "skipped": 0, "failed": 0}
    resume = "re-run the same sweep command to resume"
    if sweep.base:
        base = fixture_run(sweep.base, options.root)
        owner = _claim(base)
        if owner is not None:
            raise SweepError(
                f"{base.workdir} holds another command ({shlex.join(owner)}); FIXTURES changed: "
                "delete that directory to retrain the base"
            )
        if read_metrics(base.workdir) is None:
            log(f"base fixture {sweep.base}: {base.command_line}")
            t0 = time.perf_counter()
            try:
                code = execute(base.argv, base.workdir)
            except Interrupted as e:
                raise Interrupted(e.signame, f"stopped in the base fixture; {resume}") from None
            if code != 0 or read_metrics(base.workdir) is None:
                raise SweepError(f"base fixture failed; see {base.log_path}: {base.command_line}")
            log(f"  base ready in {time.perf_counter() - t0:.0f} s")
    stopped = None
    walls: list[float] = []  # wall seconds of the runs this invocation finished
    for i, run in enumerate(runs, 1):
        tag = f"[{i}/{len(runs)}] {run.row.name} seed {run.seed}"
        record = records.get((run.row.name, run.seed, run.argv))
        if options.rerun:
            shutil.rmtree(run.workdir, ignore_errors=True)
            run.marker_path.unlink(missing_ok=True)
        elif _finished(run, record):
            counts["skipped"] += 1
            log(f"{tag}: done earlier, skipped")
            continue
        owner = _claim(run)
        if owner is not None:
            counts["failed"] += 1
            log(
                f"{tag}: {run.workdir} holds another command ({shlex.join(owner)}); the sweep "
                "file changed this row: delete that directory (or rename the row) to re-run it"
            )
            continue
        if record is not None and read_metrics(run.workdir) is not None:
            # Trained earlier; its lm-eval is missing (failed, interrupted, or added since).
            _mark(run)
            log(f"{tag}: trained earlier, lm-eval only: {run.eval_line}")
        else:
            if sweep.command not in RESUMING and run.workdir.exists():
                shutil.rmtree(run.workdir)  # an unfinished output of a command that cannot resume
            _mark(run)  # a new attempt: an earlier failure no longer stands
            log(f"{tag}: {_eta(walls, sum(todo[i - 1 :]))}: {run.command_line}")
            t0 = time.perf_counter()
            try:
                code = execute(run.argv, run.workdir)
            except Interrupted as e:
                stopped = Interrupted(e.signame, f"stopped in {tag}; {resume}")
                break
            wall = time.perf_counter() - t0
            walls.append(wall)
            if code != 0:
                counts["failed"] += 1
                _mark(run, failed=f"exit {code}")
                log(f"{tag}: FAILED (exit {code}) after {wall:.0f} s; log: {run.log_path}")
                continue
            try:
                record = collect(run, wall, name)
            except SweepError as e:  # exit 0 without eval.json: the command stopped early
                counts["failed"] += 1
                _mark(run, failed="exit 0 without its metrics")
                log(f"{tag}: {e}")
                continue
            _append(path, record)  # the training's record first: an lm-eval failure keeps it
        if run.eval_argv:
            try:
                record, problem = sweep_lm_eval.evaluate(run, record, execute)
            except Interrupted as e:
                stopped = Interrupted(e.signame, f"stopped in {tag}'s lm-eval; {resume}")
                break
            if record is None:
                counts["failed"] += 1
                _mark(run, failed=problem)
                log(f"{tag}: {problem}; log: {run.log_path}")
                continue
            _append(path, record)
            if problem:  # recorded without it: evaluating again gives the same results
                counts["failed"] += 1
                log(f"{tag}: {problem}")
                continue
        counts["ran"] += 1
        shown = ", ".join(
            f"{m} {record['metrics'][m]:.4f}" for m in sweep.metrics if m in record["metrics"]
        )
        log(f"{tag}: {record['wall_s']:.0f} s, {shown}")
    log(
        f"sweep {name}: {counts['ran']} ran, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; results: {path}"
    )
    if stopped is not None:
        raise stopped
    return counts


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
