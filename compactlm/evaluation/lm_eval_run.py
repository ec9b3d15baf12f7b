"""`compactlm eval RUN tasks=...`: lm-eval's simple_evaluate over a run, its table and JSON."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compactlm.config import ConfigError, apply_overrides

INSTALL_HINT = "pip install 'compactlm[eval]' (lm-eval 0.4.x; no torch needed)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LmEvalConfig:
    """Options of `compactlm eval RUN tasks=...` (lm-eval's own names)."""

    # Comma-separated lm-eval task / group names (arc_easy,hellaswag); `lm-eval ls tasks`.
    tasks: str = ""
    # Examples in each prompt; None: the task's own default (most: 0).
    num_fewshot: int | None = None
    # Evaluate the first N examples of each task (0 = all): a quick look, not a score to quote.
    limit: int = 0
    # Rows per forward pass; padded to a power of two, so a few shapes compile.
    batch_size: int = 16
    # A directory of extra task YAMLs (lm-eval's TaskManager(include_path=...)).
    include_path: str = ""
    # Also keep every request's inputs and scores in the results JSON (lm-eval's log_samples).
    log_samples: bool = False
    # Bootstrap resamples for the metrics' standard errors (lm-eval's default: 100000).
    bootstrap_iters: int = 100000

    def __post_init__(self) -> None:
        if not [t for t in self.tasks.split(",") if t.strip()]:
            raise ValueError("tasks= names no task; e.g. tasks=arc_easy,hellaswag")
        if self.limit < 0:
            raise ValueError(f"limit must be >= 1 (or 0: all examples), got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"num_fewshot must be >= 0, got {self.num_fewshot}")
        if self.bootstrap_iters < 0:
            raise ValueError(f"bootstrap_iters must be >= 0, got {self.bootstrap_iters}")

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


def parse_options(args: Sequence[str]) -> LmEvalConfig:
    """The options, checked before anything loads: limit= must be >= 1 when given."""
    opts = apply_overrides(LmEvalConfig(tasks="_"), args)
    for item in args:
        key, _, value = item.partition("=")
        if key.strip() == "limit" and opts.limit <= 0:
            raise ConfigError(f"limit={value.strip()}: need a number of examples >= 1")
    return opts


def import_lm_eval():
    """lm_eval, or a one-line ConfigError saying how to install it."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError(f"tasks= needs lm-eval, which is not installed; {INSTALL_HINT}") from None
    return lm_eval


@functools.lru_cache(maxsize=4)
def _task_manager(include: str | None):
    """One TaskManager per include path and process: indexing lm-eval's ~10k task YAMLs takes
    seconds."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include)


def task_manager(opts: LmEvalConfig):
    """lm-eval's TaskManager with include_path, every task name checked against it."""
    import_lm_eval()
    include = None
    if opts.include_path:
        path = Path(opts.include_path)
        if not path.is_dir():
            raise ConfigError(
                f"include_path={opts.include_path!r} is not a directory; valid: a directory of "
                "lm-eval task YAMLs"
            )
        include = str(path.resolve())
    manager = _task_manager(include)
    unknown = [t for t in opts.task_names if t not in manager.all_tasks]
    if unknown:
        hint = f" in lm-eval's tasks or {include}" if include else " in lm-eval's tasks"
        raise ConfigError(
            f"unknown lm-eval task(s) {unknown}: not found{hint}; list them with "
            "`lm-eval ls tasks`, or add task YAMLs with include_path=DIR"
        )
    return manager


def results_path(run_dir: str | Path) -> Path:
    """RUN/lm_eval/results_<UTC time>.json, a new name (-1, -2 ... on a clash)."""
    out = Path(run_dir) / "lm_eval"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path, n = out / f"results_{stamp}.json", 0
    while path.exists():
        n += 1
        path = out / f"results_{stamp}-{n}.json"
    return path


def write_results(results: dict[str, Any], run_dir: str | Path) -> Path:
    """The results JSON (lm-eval's own encoder), created exclusively: nothing is overwritten."""
    from lm_eval.utils import handle_non_serializable

    path = results_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
    with open(path, "x", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


def evaluate_tasks(run_dir: str, args: Sequence[str], *, trainer: Any = None) -> dict[str, Any]:
    """Run lm-eval's tasks on the run; print lm-eval's table; write the JSON beside the run.

    Returns lm-eval's results dict with "path" (the JSON written) added. Bad input (unknown task,
    include_path, limit, lm-eval missing) fails before the run loads and writes nothing.
    """
    opts = parse_options(args)
    manager = task_manager(opts)
    from lm_eval import simple_evaluate
    from lm_eval.utils import make_table

    from compactlm.evaluation.lm_eval_model import CompactLM

    lm = CompactLM(run_dir, batch_size=opts.batch_size, trainer=trainer)
    results = simple_evaluate(
        model=lm,
        tasks=opts.task_names,
        num_fewshot=opts.num_fewshot,
        limit=opts.limit or None,
        task_manager=manager,
        log_samples=opts.log_samples,
        bootstrap_iters=opts.bootstrap_iters,
    )
    results["config"]["model"] = "compactlm"
    results["config"]["model_args"] = {"run_dir": str(run_dir), "batch_size": opts.batch_size}
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    path = write_results(results, run_dir)
    print(f"lm-eval results: {path}")
    results["path"] = str(path)
    return results
