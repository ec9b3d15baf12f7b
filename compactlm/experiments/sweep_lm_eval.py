"""lm-eval metrics of a sweep: "lm-eval:TASK/METRIC" names, checked against lm-eval, scored by a
`compactlm eval WORKDIR tasks=...` child per finished run, read back from its results JSON.

The runner (experiments/sweep.py) calls `check_spelling` when a sweep file is loaded (cheap,
lm-eval not imported), `check_targets` before any row runs (lm-eval's TaskManager, with the
sweep's include_path, as `compactlm eval` checks), and `evaluate` after a row's own command.
Errors are ValueError with one line; the runner reports them as SweepError.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# A metric named "lm-eval:TASK/METRIC" is lm-eval's METRIC of TASK on the row's run.
LM_EVAL_PREFIX = "lm-eval:"


def is_lm_eval(metric: str) -> bool:
    return metric.startswith(LM_EVAL_PREFIX)


def targets(metrics: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """(task, metric) of every "lm-eval:TASK/METRIC" in metrics, in order."""
    out = []
    for m in metrics:
        if is_lm_eval(m):
            task, _, metric = m[len(LM_EVAL_PREFIX) :].partition("/")
            out.append((task, metric))
    return tuple(out)


def check_spelling(metrics: Sequence[str], options: Sequence[str]) -> None:
    """The names' shape and the eval options (`lm_eval=(...)` of the sweep file)."""
    for m in metrics:
        if is_lm_eval(m):
            task, _, metric = m[len(LM_EVAL_PREFIX) :].partition("/")
            if not task or not metric or "/" in metric or "," in task:
                raise ValueError(
                    f"metric {m!r}: write lm-eval:TASK/METRIC (one task, one metric: "
                    "lm-eval:arc_easy/acc)"
                )
    if not options:
        return
    if not targets(metrics):
        raise ValueError(
            f"lm_eval={list(options)} but no metric is lm-eval:TASK/METRIC; add one to "
            "metrics (lm-eval:arc_easy/acc) or drop lm_eval"
        )
    from compactlm.config import ConfigError
    from compactlm.evaluation.lm_eval_run import parse_options

    keys = [o.partition("=")[0].strip() for o in options]
    if "tasks" in keys:
        raise ValueError("lm_eval sets tasks=; the tasks come from the lm-eval:TASK/METRIC metrics")
    try:
        parse_options(options)
    except (ConfigError, ValueError) as e:
        raise ValueError(f"lm_eval={list(options)}: {e}") from None


def task_metrics(manager: Any, task: str) -> list[str] | None:
    """The metrics lm-eval reports for a task (its YAML's metric_list, else lm-eval's defaults
    for its output_type) or group (aggregate_metric_list); None where the index cannot say
    (a Python-defined task): then only the results can."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    entry = manager.task_index.get(task)
    cfg = getattr(entry, "cfg", None) or {}
    kind = getattr(getattr(entry, "kind", None), "name", "")
    if kind == "GROUP":
        names = [m.get("metric") for m in cfg.get("aggregate_metric_list") or []]
    elif kind == "TASK":
        names = [m.get("metric") for m in cfg.get("metric_list") or []]
        names = names or DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type"), [])
    else:
        return None
    names = [n for n in names if isinstance(n, str)]
    return names or None


def check_targets(pairs: Sequence[tuple[str, str]], options: Sequence[str]) -> None:
    """Every (task, metric) names a task lm-eval knows (its TaskManager with `options`'
    include_path) and a metric that task reports; else one line naming the valid ones."""
    from compactlm.config import ConfigError
    from compactlm.evaluation.lm_eval_run import parse_options, task_manager

    tasks = ",".join(dict.fromkeys(t for t, _ in pairs))
    try:
        manager = task_manager(parse_options([*options, f"tasks={tasks}"]))
    except ConfigError as e:
        raise ValueError(f"lm-eval metrics: {e}") from None
    for task, metric in pairs:
        valid = task_metrics(manager, task)
        if valid is not None and metric not in valid:
            raise ValueError(
                f"metric lm-eval:{task}/{metric}: {task} reports no {metric}; valid: "
                + ", ".join(f"lm-eval:{task}/{v}" for v in valid)
            )


def read_lm_eval(
    results: dict[str, Any], pairs: Sequence[tuple[str, str]]
) -> tuple[dict[str, float], list[str]]:
    """From lm-eval's results JSON: {"lm-eval:TASK/METRIC": value, ".../METRIC_stderr": its
    standard error} (filter "none"), and one note per target the results lack."""
    metrics: dict[str, float] = {}
    missing = []
    for task, metric in pairs:
        got = results.get("results", {}).get(task, {})
        key = f"{LM_EVAL_PREFIX}{task}/{metric}"
        value = got.get(f"{metric},none")
        if not isinstance(value, int | float):
            have = sorted({k.partition(",")[0] for k in got if "," in k and "_stderr," not in k})
            missing.append(f"{key} ({task} has {', '.join(have) or 'no results'})")
            continue
        metrics[key] = float(value)
        stderr = got.get(f"{metric}_stderr,none")
        if isinstance(stderr, int | float):  # "N/A" where lm-eval computed none
            metrics[f"{key}_stderr"] = float(stderr)
    return metrics, missing


def evaluate(
    run: Any,  # a sweep.Run: workdir, eval_argv, eval_line, lm_eval_targets
    record: dict[str, Any],
    execute: Callable[[Sequence[str], Path], int],
) -> tuple[dict[str, Any] | None, str]:
    """Run `compactlm eval WORKDIR tasks=...` like a row's command; (the record with the lm-eval
    metrics and argv added, a note on metrics the results lack), or (None, why it failed)."""
    out = run.workdir / "lm_eval"
    before = set(out.glob("results_*.json"))
    t0 = time.perf_counter()
    code = execute(run.eval_argv, run.workdir)
    wall = time.perf_counter() - t0
    if code != 0:
        return None, f"lm-eval exit {code}: {run.eval_line}"
    new = sorted(set(out.glob("results_*.json")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        return None, f"lm-eval exit 0 without a results JSON in {out}: {run.eval_line}"
    metrics, missing = read_lm_eval(json.loads(new[-1].read_text()), run.lm_eval_targets)
    stale = {k for k in record["metrics"] if is_lm_eval(k)}
    record = {
        **record,
        "metrics": {**{k: v for k, v in record["metrics"].items() if k not in stale}, **metrics},
        "lm_eval_argv": list(run.eval_argv),
        # what was asked of it: a metric the results lack is not asked again on resume
        "lm_eval_metrics": [f"{LM_EVAL_PREFIX}{t}/{m}" for t, m in run.lm_eval_targets],
        "lm_eval_results": str(new[-1]),
        "lm_eval_wall_s": wall,
        "time": time.time(),
    }
    problem = ""
    if missing:
        problem = f"lm-eval results lack {'; '.join(missing)}; results: {new[-1]}"
    return record, problem
