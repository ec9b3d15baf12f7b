"""The command-line help (`compactlm <command> --help`), generated from the config dataclasses.

A command's help is its usage lines (cli.py's docstring), then every key its `key=value`
overrides accept, walked from the same dataclass instance `apply_overrides` parses against:
nested sections as `section.key`, the type as the error messages describe it
(`config._describe`: Literal choices as 'a' | 'b'), the default, and the comment written on or
above the field in its class's source. Help and validation read one definition, so a new field
cannot be missing from the help. The option classes are imported only here, inside functions:
`compactlm` with no command, or a wrong one, loads none of them.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any

WIDTH = 100  # the code's line length (ruff), for the printed lines too
INDENT = " " * 6  # a key's comment, under the key


@functools.cache
def _source_notes(cls: type) -> tuple[str, dict[str, str]]:
    """(the class docstring's first paragraph, {field declared in this class: its comment}).

    A field's comment is the block of comment lines right above its line plus any comment on
    the field's own lines (a default that ruff wrapped onto several lines keeps its trailing
    comment inside the parentheses). Blank lines end the block above.
    """
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in a REPL or generated: no source to read
        return "", {}
    lines = source.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
    fields = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, row = [], stmt.lineno - 1
        while row in comments and lines[row - 1].lstrip().startswith("#"):
            above.insert(0, comments[row])
            row -= 1
        own = [comments[r] for r in range(stmt.lineno, stmt.end_lineno + 1) if r in comments]
        fields[stmt.target.id] = " ".join(above + own)
    doc = (ast.get_docstring(node) or "").split("\n\n")[0]
    return " ".join(doc.split()), fields


def field_comments(cls: type) -> dict[str, str]:
    """{field: comment} of a dataclass. A field a subclass declares again (QuantizeJob.method
    narrows QuantConfig.method) gets the base's comment, then the subclass's."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for name, text in _source_notes(klass)[1].items():
                out[name] = " ".join(t for t in (out.get(name, ""), text) if t)
    return out


def _show(value: Any) -> str:
    """A default as it is typed on the command line (tuples comma-separated, bools lowercase);
    strings quoted so that an empty one is visible and choices read as in the type."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "()"
    return repr(value)


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(
        text,
        WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def describe_keys(options: Any, prefix: str = "", *, defaults: bool = True) -> list[str]:
    """Lines for every key of a dataclass instance: its own keys first, then each section
    (`prefix.section.*`, with the section field's comment or its class's docstring)."""
    from compactlm.config import _describe, _field_types

    comments = field_comments(type(options))
    lines, sections = [], []
    for name, tp in _field_types(type(options)).items():
        value = getattr(options, name)
        if dataclasses.is_dataclass(value):  # as config._valid_keys: a section to descend into
            sections.append((name, value))
            continue
        head = f"{prefix}{name}: {_describe(tp)}" + (f" = {_show(value)}" if defaults else "")
        lines += _wrap(head, "  ", INDENT)
        lines += _wrap(comments.get(name, ""), INDENT, INDENT)
    for name, value in sections:
        about = comments.get(name) or _source_notes(type(value))[0]
        lines += [""] if lines else []
        lines += [*_wrap(f"{prefix}{name}.*" + (f"  {about}" if about else ""), "", "  ")]
        lines += describe_keys(value, f"{prefix}{name}.", defaults=defaults)
    return lines


def usage_lines(command: str, usage: str) -> list[str]:
    """The lines of the usage text (cli.py's, passed in: help sits below cli) for `command`
    ("bench decode": that sub-command's), each with its continuation lines."""
    lines, keep = [], False
    for line in usage.splitlines():
        if line.startswith("compactlm "):
            keep = f"{line} ".startswith(f"compactlm {command} ")
        if keep and line.strip():
            lines.append(line)
    return lines


def version() -> str:
    """`compactlm X.Y.Z` from the installed distribution's metadata (setup.py's version)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"compactlm {dist_version('compactlm')}"
    except PackageNotFoundError:  # run from a source tree that was never pip-installed
        return "compactlm (version unknown: not installed; pip install -e .)"


BENCH_TARGETS = ("train", "kernels", "decode")


def command_help(command: str, args: list[str], usage: str) -> str:
    """The help of `compactlm COMMAND ARGS... --help` (ARGS without the help flag: a preset
    among them picks the defaults shown for train / info / bench train / distill); `usage` is
    cli.py's usage text."""
    positional = [a for a in args if "=" not in a and not a.startswith("-")]
    if command == "bench":
        if not positional or positional[0] not in BENCH_TARGETS:
            subs = ", ".join(f"`compactlm bench {t} --help`" for t in BENCH_TARGETS)
            text = f"the keys of each target: {subs}"
            return "\n".join(["usage:", *usage_lines("bench", usage), "", *_wrap(text, "", "")])
        command, positional = f"bench {positional[0]}", positional[1:]
    notes, sections = _COMMANDS[command](positional)
    out = ["usage:", *usage_lines(command, usage)]
    for note in notes:
        out += ["", *_wrap(note, "", "")]
    for title, options, defaults in sections:
        out += ["", *_wrap(title, "", ""), *describe_keys(options, defaults=defaults)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Per command: (notes, [(title, the options instance its overrides apply to, show defaults)]).
# Each imports its classes here, from where the command's own code takes them.
# ------------------------------------------------------------------------------------------------

Section = tuple[str, Any, bool]


def _config_notes(preset: str, other: str = "PRESET --help") -> list[str]:
    from compactlm.config import ALIASES, PRESETS, Config, _valid_keys

    aliases = "; ".join(f"{short}KEY is short for {full}KEY" for short, full in ALIASES.items())
    sections = dict.fromkeys(k.split(".")[0] for k in _valid_keys(Config()) if "." in k)
    return [
        f"presets: {', '.join(PRESETS)} (`compactlm info` compares them). The defaults below are "
        f"preset {preset}'s; `... {other}` shows another's.",
        f"sections: {', '.join(f'{s}.*' for s in sections)}; {aliases}.",
    ]


def _preset(positional: list[str], default: str, at: int = 0) -> str:
    from compactlm.config import PRESETS

    name = positional[at] if len(positional) > at else default
    return name if name in PRESETS else default


def _train(positional: list[str]) -> tuple[list[str], list[Section]]:
    from compactlm.config import get_preset

    preset = _preset(positional, "tiny")
    return _config_notes(preset), [("keys (key=value):", get_preset(preset), True)]


def _info(positional: list[str]) -> tuple[list[str], list[Section]]:
    notes, sections = _train(positional)
    note = "With a RUN_DIR, info describes the run as saved and takes no keys."
    return [*notes, note], [("keys (key=value, with a preset):", *sections[0][1:])]


def _saved_config(what: str) -> tuple[list[str], list[Section]]:
    from compactlm.config import Config

    notes = [f"The keys override {what}; each is the run's own value unless given."]
    return notes, [("keys (key=value):", Config(), False)]


def _finetune(positional: list[str]) -> tuple[list[str], list[Section]]:
    from compactlm.train.finetune import CHANGEABLE_MODEL_FIELDS, STORAGE_FIELDS

    notes, sections = _saved_config("the base run's saved config")
    model = sections[0][1].model
    changeable = ", ".join(
        f"model.{f}" + (".*" if dataclasses.is_dataclass(getattr(model, f)) else "")
        for f in CHANGEABLE_MODEL_FIELDS
    )
    storage = ", ".join(f"model.{f}" for f in STORAGE_FIELDS)
    notes += [
        f"model.* keys a fine-tune may change (the others would not fit the base's weights): "
        f"{changeable}; on a packed (quantized / 2:4) base not "
        f"{storage}. optim.* starts from fine-tuning defaults (train/finetune.py) unless given."
    ]
    return notes, sections


def _distill(positional: list[str]) -> tuple[list[str], list[Section]]:
    from compactlm.config import get_preset
    from compactlm.train.distill_run import DistillArgs

    preset = _preset(positional, "nano", at=1)
    notes = _config_notes(preset, other="TEACHER_RUN_DIR PRESET --help")
    notes.append("The student's data.* starts as the teacher's (one tokenizer for both).")
    return notes, [
        ("distillation keys (key=value):", DistillArgs(), True),
        ("student keys (key=value):", get_preset(preset), True),
    ]


def _options(module: str, name: str, *notes: str):
    """A command whose keys are one options class (`module.name`), with its defaults."""

    def options(positional: list[str]) -> tuple[list[str], list[Section]]:
        import importlib

        cls = getattr(importlib.import_module(module), name)
        return list(notes), [("keys (key=value):", cls(), True)]

    return options


def _export(positional: list[str]) -> tuple[list[str], list[Section]]:
    """Each format's own keys (format=gguf and format=compressed-tensors take more than hf)."""
    sections = []
    for title, module, name in (
        ("keys (key=value):", "compactlm.commands", "ExportConfig"),
        ("format=gguf keys (key=value):", "compactlm.interop.gguf", "GGUFExportConfig"),
        (
            "format=compressed-tensors keys (key=value):",
            "compactlm.interop.compressed_tensors",
            "CTExportConfig",
        ),
    ):  # by name, as _options does: help sits below the entry point commands.py
        sections += _options(module, name)(positional)[1]
        sections[-1] = (title, *sections[-1][1:])
    return [], sections


def _sweep(positional: list[str]) -> tuple[list[str], list[Section]]:
    from compactlm.experiments.sweep import available

    names = ", ".join(available()) or "none found"
    note = f"sweeps (NAME: a file in configs/sweeps/, or a path to one): {names}"
    return _options("compactlm.experiments.sweep", "SweepOptions", note)(positional)


_COMMANDS = {
    "train": _train,
    "bench train": _train,
    "info": _info,
    "finetune": _finetune,
    "distill": _distill,
    "distill-cache": _options(
        "compactlm.train.distill_cache",
        "CacheConfig",
        "data.* keys apply to the teacher's data section (the student's, as in distill).",
    ),
    "eval": lambda positional: _saved_config(
        "the run's saved config for this evaluation (data.corpus=pydocs: another corpus)"
    ),
    "import": lambda positional: _saved_config(
        "the config read from HF_DIR's config.json (model.* shapes come from it)"
    ),
    "generate": _options("compactlm.commands", "SampleConfig"),
    "merge": _options("compactlm.commands", "MergeConfig"),
    "export": _export,
    "quantize": _options("compactlm.compress.job", "QuantizeJob"),
    "prune": _options(
        "compactlm.compress.job",
        "PruneJob",
        "Quantization after pruning is off until a quantize.* key is given.",
    ),
    "sweep": _sweep,
    "report": _options("compactlm.experiments.report", "ReportOptions"),
    "pick": _options("compactlm.experiments.pick", "PickConfig", "--plot is plot=true."),
    "recipe": _options("compactlm.experiments.recipe", "RecipeConfig"),
    "bench kernels": _options(
        "compactlm.benchmarks.bench_kernels",
        "BenchKernelsConfig",
        "The old flags still work: --formats int4 --time-budget-s 60.",
    ),
    "bench decode": _options("compactlm.benchmarks.bench_decode", "BenchDecodeConfig"),
}
