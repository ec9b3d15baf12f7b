"""`compactlm <command> [preset|RUN_DIR] key=value ...`: parse and dispatch only.

compactlm train [preset] [key=value ...] [workdir=DIR] [--dry-run]
compactlm finetune BASE_RUN_DIR [adapter.kind=lora adapter.targets=q,v model.weight_format=nf4
                   data.corpus=pydocs ...] workdir=DIR [--dry-run]
compactlm merge RUN_DIR workdir=DIR [dequantize=true]
compactlm distill TEACHER_RUN_DIR [student preset] distill.loss=fkl|rkl|jsd|skl|srkl|tvd
    distill.temperature=2 distill.alpha=0.5 distill.beta=0.5 distill.skew=0.1 distill.top_k=0
    distill.on_policy=0.0 [key=value ...] [workdir=DIR] [--dry-run]
    (or CACHE instead of TEACHER_RUN_DIR: a distill-cache of its logits, no teacher loaded)
compactlm distill-cache TEACHER_RUN_DIR [data.*=...] top_k=64 steps=N seeds=0,1,2 batch_size=16
    seq_len=128 temperatures=1,2 workdir=CACHE
compactlm eval RUN_DIR [key=value ...]
compactlm eval RUN_DIR tasks=arc_easy,hellaswag [num_fewshot=0 limit=N include_path=DIR]
compactlm generate RUN_DIR prompt="..." max_new_tokens=200 temperature=0.8 top_k=50 ...
compactlm info [preset | RUN_DIR]   RUN_DIR: storage format, bytes in memory and on disk
compactlm bench train [preset] [key=value ...]
compactlm bench kernels [formats=int4,nf4,...] [shapes=4096x4096,...] [ms=1,16] [impl=triton]
compactlm bench kernels sass=1 [formats=...]   SASS instructions per weight (no GPU needed)
compactlm bench decode RUN_DIR [batch_sizes=1,16] [new_tokens=64]   compressed vs dense tokens/s
compactlm bench decode RUN_DIR peer=llama.cpp [gguf=PATH]   compactlm vs llama.cpp, one model
compactlm sweep NAME [--dry-run] [seeds=3] [only=ROW,...] [rerun=true] [root=runs/sweeps]
compactlm report NAME [out=DIR] [root=runs/sweeps]
compactlm export RUN_DIR format=hf workdir=OUT
compactlm import HF_DIR workdir=RUN_DIR [key=value ...]
compactlm pick memory=2GiB [latency_ms=...] [device=cpu|h100|h200] [metric=bpb] [--plot]
compactlm quantize RUN_DIR method=rtn|gptq|awq format=int4|int4_affine|nf4|fp4 bits=4
                   group_size=128 calib.sequences=128 [double_quant=true] workdir=OUT [--dry-run]
compactlm prune RUN_DIR method=magnitude|wanda|sparsegpt pattern=2:4|4:8|unstructured
                sparsity=0.5 [quantize.bits=4 ...] [recover.steps=N
                recover.mode=finetune|distill] workdir=OUT [--dry-run]
compactlm recipe [RUN_DIR] [preset=tiny] [stages=pretrain,int4,sparse24_int4,gguf]
                 [workdir=runs/recipe] [--dry-run]
compactlm COMMAND -h|--help   (or compactlm help COMMAND): its keys, their types, defaults, meaning
compactlm --version
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

USAGE = __doc__.split("\n\n", 1)[1]
HELP_FLAGS = ("-h", "--help")  # anywhere after the command: its help (compactlm/help.py)

COMMANDS = (
    "train",
    "finetune",
    "merge",
    "distill",
    "distill-cache",
    "eval",
    "generate",
    "info",
    "bench",
    "sweep",
    "report",
    "pick",
    "recipe",
    "export",
    "import",
    "quantize",
    "prune",
)


def _split_args(args: Sequence[str]) -> tuple[str | None, list[str], dict[str, str]]:
    """(first positional, key=value overrides, special keys such as workdir=)."""
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    special = {}
    for key in ("workdir",):
        for item in list(overrides):
            if item.startswith(f"{key}="):
                special[key] = item.split("=", 1)[1]
                overrides.remove(item)
    if len(positional) > 1:
        raise _usage_error(f"unexpected arguments {positional[1:]}")
    return (positional[0] if positional else None), overrides, special


class _UsageError(Exception):
    pass


def _usage_error(msg: str) -> _UsageError:
    return _UsageError(msg)


def _cmd_train(args: list[str]) -> int:
    from compactlm import commands

    dry_run = "--dry-run" in args
    args = [a for a in args if a != "--dry-run"]
    preset, overrides, special = _split_args(args)
    return commands.train(
        preset or "tiny", overrides, workdir=special.get("workdir"), dry_run=dry_run
    )


def _dry_run(args: list[str]) -> tuple[bool, list[str]]:
    """(whether --dry-run was given, the other arguments)."""
    return "--dry-run" in args, [a for a in args if a != "--dry-run"]


def _cmd_finetune(args: list[str]) -> int:
    from compactlm import commands

    dry_run, args = _dry_run(args)
    base_dir, overrides, special = _split_args(args)
    if base_dir is None:
        raise _usage_error("finetune needs a BASE_RUN_DIR")
    return commands.finetune(base_dir, overrides, workdir=special.get("workdir"), dry_run=dry_run)


def _cmd_merge(args: list[str]) -> int:
    from compactlm import commands

    run_dir, overrides, special = _split_args(args)
    if run_dir is None:
        raise _usage_error("merge needs a RUN_DIR")
    return commands.merge(run_dir, overrides, workdir=special.get("workdir"))


def _cmd_distill(args: list[str]) -> int:
    from compactlm import commands

    dry_run, args = _dry_run(args)
    positional = [a for a in args if "=" not in a]
    if not positional:
        raise _usage_error("distill needs a TEACHER_RUN_DIR")
    if len(positional) > 2:
        raise _usage_error(f"unexpected arguments {positional[2:]}")
    _, overrides, special = _split_args([a for a in args if a not in positional])
    preset = positional[1] if len(positional) == 2 else "nano"
    return commands.distill(
        positional[0], preset, overrides, workdir=special.get("workdir"), dry_run=dry_run
    )


def _cmd_distill_cache(args: list[str]) -> int:
    from compactlm import commands

    teacher_dir, overrides, special = _split_args(args)
    if teacher_dir is None:
        raise _usage_error("distill-cache needs a TEACHER_RUN_DIR")
    return commands.distill_cache(teacher_dir, overrides, workdir=special.get("workdir"))


def _cmd_eval(args: list[str]) -> int:
    from compactlm import commands

    run_dir, overrides, _ = _split_args(args)
    if run_dir is None:
        raise _usage_error("eval needs a RUN_DIR")
    return commands.evaluate(run_dir, overrides)


def _cmd_generate(args: list[str]) -> int:
    from compactlm import commands

    run_dir, overrides, _ = _split_args(args)
    if run_dir is None:
        raise _usage_error("generate needs a RUN_DIR")
    return commands.generate(run_dir, overrides)


def _cmd_info(args: list[str]) -> int:
    from compactlm import commands

    preset, overrides, _ = _split_args(args)
    return commands.info(preset, overrides)


def _cmd_bench(args: list[str]) -> int:
    from compactlm import commands

    if not args or args[0] not in ("train", "kernels", "decode"):
        raise _usage_error("bench needs a target: train, kernels or decode")
    if args[0] == "train":
        preset, overrides, _ = _split_args(args[1:])
        return commands.bench_train(preset or "tiny", overrides)
    if args[0] == "decode":
        run_dir, overrides, _ = _split_args(args[1:])
        if run_dir is None:
            raise _usage_error("bench decode needs a RUN_DIR")
        return commands.bench_decode(run_dir, overrides)
    return commands.bench_kernels(args[1:])


def _cmd_sweep(args: list[str]) -> int:
    from compactlm import commands

    dry_run = "--dry-run" in args
    args = [a for a in args if a != "--dry-run"]
    name, options, _ = _split_args(args)
    if name is None:
        raise _usage_error("sweep needs a NAME (a file in configs/sweeps/)")
    return commands.sweep(name, options, dry_run=dry_run)


def _cmd_report(args: list[str]) -> int:
    from compactlm import commands

    name, options, _ = _split_args(args)
    if name is None:
        raise _usage_error("report needs a sweep NAME")
    return commands.report(name, options)


def _cmd_export(args: list[str]) -> int:
    from compactlm import commands

    run_dir, overrides, special = _split_args(args)
    if run_dir is None:
        raise _usage_error("export needs a RUN_DIR")
    return commands.export(run_dir, overrides, workdir=special.get("workdir"))


def _cmd_import(args: list[str]) -> int:
    from compactlm import commands

    source, overrides, special = _split_args(args)
    if source is None:
        raise _usage_error("import needs a Hugging Face model directory (HF_DIR)")
    return commands.import_(source, overrides, workdir=special.get("workdir"))


def _cmd_pick(args: list[str]) -> int:
    from compactlm import commands

    plot = "--plot" in args
    args = [a for a in args if a != "--plot"]
    _, options, _ = _split_args(args)
    if any("=" not in a for a in args):
        raise _usage_error(f"pick takes only key=value options, got {args}")
    return commands.pick([*options, *(["plot=true"] if plot else [])])


def _cmd_quantize(args: list[str]) -> int:
    from compactlm import commands

    dry_run, args = _dry_run(args)
    run_dir, overrides, special = _split_args(args)
    if run_dir is None:
        raise _usage_error("quantize needs a RUN_DIR")
    return commands.quantize(run_dir, overrides, workdir=special.get("workdir"), dry_run=dry_run)


def _cmd_prune(args: list[str]) -> int:
    from compactlm import commands

    dry_run, args = _dry_run(args)
    run_dir, overrides, special = _split_args(args)
    if run_dir is None:
        raise _usage_error("prune needs a RUN_DIR")
    return commands.prune(run_dir, overrides, workdir=special.get("workdir"), dry_run=dry_run)


def _cmd_recipe(args: list[str]) -> int:
    from compactlm import commands

    dry_run, args = _dry_run(args)
    run_dir, options, special = _split_args(args)
    if "workdir" in special:
        options.append(f"workdir={special['workdir']}")
    return commands.recipe(run_dir, options, dry_run=dry_run)


def _print_and_exit(text: str) -> None:
    """Print help and exit 0; a reader that went away (`compactlm train --help | head`) is fine."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # as in main: stdout to /dev/null, so the final flush cannot raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> None:
    """The program (`compactlm`, `python -m compactlm`); called with `argv`, the same in-process.

    As the program (argv None) it puts the fast allocator in place before running a command,
    which re-executes the process (compactlm/allocator.py); help and --version run nothing and
    skip it. An in-process call (tests, scripts) never re-executes.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 and args[0] in ("help", *HELP_FLAGS):  # `compactlm help quantize`
        args = [*args[1:], "--help"]
    if not args or args[0] in ("help", *HELP_FLAGS):
        _print_and_exit(USAGE)
    if args[0] in ("-V", "--version"):
        from compactlm.help import version

        _print_and_exit(version())
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"compactlm: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    if any(a in HELP_FLAGS for a in rest):
        from compactlm.help import command_help

        _print_and_exit(command_help(command, [a for a in rest if a not in HELP_FLAGS], USAGE))
    if argv is None:
        from compactlm.allocator import AllocatorError, ensure

        try:
            ensure()
        except AllocatorError as e:
            print(f"compactlm: error: {e}", file=sys.stderr)
            sys.exit(2)
    from compactlm.commands import USER_ERRORS
    from compactlm.interrupt import Interrupted

    handler = globals()[f"_cmd_{command.replace('-', '_')}"]
    try:
        code = handler(rest)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at exit
    except _UsageError as e:
        print(f"compactlm {command}: {e}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    except USER_ERRORS as e:
        print(f"compactlm {command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:  # SIGINT / SIGTERM, stopped at a safe point (compactlm/interrupt.py)
        print(f"compactlm {command}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a command's safe points
        print(f"compactlm {command}: interrupted", file=sys.stderr)
        sys.exit(130)  # 128 + SIGINT
    except BrokenPipeError:
        # The reader went away (`compactlm sweep NAME --dry-run | head`): stop quietly, as `cat`
        # does, and point stdout at /dev/null so the interpreter's final flush cannot raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe
    sys.exit(code or 0)
