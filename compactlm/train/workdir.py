"""The output-directory invariant: a command writes only into a new directory, or resumes itself.

Every command that writes a run directory (train, finetune, distill, merge, quantize, prune,
import; export writes a Hugging Face directory under the same rule) calls `claim_workdir` before
any work. The rule:

- a missing or empty directory (or one holding only a `command.json`, the marker of an attempt
  that stopped before writing anything) is new: the command may write there;
- a directory that holds a run of the same *resumable* command (train, finetune, distill) may be
  resumed; each command then checks that it is the same run (train: config.json; finetune:
  base.json; distill: distill.json), so resuming never means rewriting someone else's work;
- a directory that holds an unfinished attempt of the same one-shot command (quantize / prune /
  merge / import: their result file is written last) may be retried;
- anything else is refused in one line naming the directory and what it holds: a teacher's
  run given as a distillation workdir, a training run given to quantize, a directory of the
  user's own files.

What a directory holds comes from its `command.json` (written when a command claims it), or, for
run directories made before that marker existed, from the files only one command writes
(compression.json: quantize / prune; distill.json: distill; base.json: finetune; config.json
alone: train).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from compactlm.config import ConfigError

MARKER = "command.json"
RESUMABLE = ("train", "finetune", "distill")
# The file each one-shot command writes last: present = the command finished there.
FINISHED_BY = {
    "quantize": "compression.json",
    "prune": "compression.json",
    "merge": "checkpoints",
}


_OWN_TEMPORARIES = (f".{MARKER}.tmp", ".compactlm-write-probe-")


class WorkdirError(ConfigError):
    """The workdir holds something this command must not write into, or cannot be written."""


def held_by(workdir: str | Path) -> str | None:
    """The command whose output `workdir` holds; None when it is missing or empty; "files" when
    it holds files that no compactlm command wrote."""
    path = Path(workdir)
    if not path.exists():
        return None
    if not path.is_dir():
        return "file"
    # (our own leftovers of a killed claim or probe do not make a directory anyone's)
    names = {p.name for p in path.iterdir() if not p.name.startswith(_OWN_TEMPORARIES)}
    if not names - {MARKER}:
        return None  # new, or an attempt that stopped before writing anything
    if MARKER in names and _marker_command(path):
        return _marker_command(path)
    if "compression.json" in names:
        try:
            return str(json.loads((path / "compression.json").read_text())["command"])
        except (OSError, ValueError, KeyError, TypeError):
            return "quantize"
    for name, command in (("distill.json", "distill"), ("base.json", "finetune")):
        if name in names:
            return command
    if ("config.json" in names and "model.safetensors" in names) or "model.gguf" in names:
        return "export"  # format=hf, or format=gguf
    if "config.json" in names or "checkpoints" in names:
        return "train"
    return "files"


def _marker_command(path: Path) -> str | None:
    try:
        return str(json.loads((path / MARKER).read_text())["command"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _describe(path: Path, holder: str) -> str:
    if holder == "file":
        return "is a file, not a directory"
    if holder == "files":
        shown = sorted(p.name for p in path.iterdir())
        more = f", ... ({len(shown)} entries)" if len(shown) > 3 else ""
        return f"holds files that no compactlm command wrote ({', '.join(shown[:3])}{more})"
    return f"holds a `compactlm {holder}` run"


def check_workdir(workdir: str | Path, command: str) -> None:
    """Raise WorkdirError unless `command` may write into `workdir` (the rule above); also checks
    that the directory (or the nearest existing parent it would be created in) is writable.
    Writes nothing."""
    path = Path(workdir)
    holder = held_by(path)
    advice = "choose a new workdir"
    if holder is not None and holder != command:
        if command in RESUMABLE:
            rule = f"`{command}` writes only into a new directory or resumes its own runs"
        else:
            rule = f"`{command}` writes only into a new directory"
        raise WorkdirError(f"workdir {path} {_describe(path, holder)}; {rule}: {advice}")
    if holder is not None and command not in RESUMABLE:
        finished = FINISHED_BY.get(command)  # import / export: written whole, then renamed
        if finished is None or (path / finished).exists():
            raise WorkdirError(
                f"workdir {path} already holds a finished `compactlm {command}` result; "
                f"{command} never overwrites one: {advice}"
            )
    _check_writable(path)


def _check_writable(path: Path) -> None:
    """Create and remove a probe file in `path`, or in the nearest existing parent it would be
    created under: a real write, since permission bits say nothing to root and nothing of a
    read-only mount, and a command must not find out after its work is done."""
    import tempfile

    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise WorkdirError(f"cannot create workdir {path}: {probe} is a file, not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".compactlm-write-probe-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = "" if probe == path else f" (it would be created in {probe})"
        raise WorkdirError(
            f"workdir {path} is not writable{where}: {e.strerror or e}; choose a writable directory"
        ) from None


def claim_workdir(workdir: str | Path, command: str) -> Path:
    """check_workdir, then create the directory and record `command` in it (process 0 only).

    A failure to create or write it (a read-only file system, a permission the access check
    could not see) is the same one-line WorkdirError, before any work is done."""
    import jax

    check_workdir(workdir, command)
    path = Path(workdir)
    if jax.process_index() != 0 or held_by(path) is not None:
        return path  # a run being resumed is not touched (one made before markers keeps none)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{MARKER}.tmp"
        tmp.write_text(json.dumps({"command": command}) + "\n")
        os.replace(tmp, path / MARKER)
    except OSError as e:
        raise WorkdirError(f"cannot write into workdir {path}: {e.strerror or e}") from None
    return path
