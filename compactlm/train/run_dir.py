"""Existing run directories as inputs: load one (eval, generate, a fine-tuning base, a teacher)
and fingerprint it (an adapter or a student records which base / teacher it was made from)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flax import nnx

from compactlm.train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from compactlm.config import Config
    from compactlm.train.loop import Trainer


def _config_path(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {str(run_dir)!r} a compactlm run directory?")
    return path


def read_config(run_dir: str | Path) -> Config:
    """The saved Config of a run directory (config.json), without loading anything else.

    THE reader of a run's config.json (every command that takes a RUN_DIR comes here): a missing,
    empty, hand-broken or invalid file is a one-line error naming the file, never a traceback.
    """
    from compactlm.config import ConfigError, from_json

    path = _config_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return from_json(text, source=str(path))


# Data keys that decide which documents are validation documents (data/corpus.py split_corpus:
# the document set, its byte total and the hash seed). Changed on the run's own corpus, the
# "validation" split would hold documents the run trained on.
SPLIT_KEYS = ("split_seed", "val_fraction", "max_corpus_bytes", "glob", "jsonl_field")


def check_same_split(saved: Config, cfg: Config, run_dir: str | Path) -> None:
    """`cfg` (saved + overrides) scores the run's own validation split, or another corpus."""
    from compactlm.config import ConfigError

    a, b = saved.data, cfg.data
    if a.corpus != b.corpus and Path(a.corpus).resolve() != Path(b.corpus).resolve():
        return  # a different corpus entirely: none of it was trained on by construction
    changed = [k for k in SPLIT_KEYS if getattr(a, k) != getattr(b, k)]
    if changed:
        asked = ", ".join(f"data.{k}={getattr(b, k)!r}" for k in changed)
        runs = ", ".join(f"data.{k}={getattr(a, k)!r}" for k in SPLIT_KEYS)
        raise ConfigError(
            f"{asked} would move documents {run_dir} trained on into validation (corpus "
            f"{a.corpus!r}); the run's split is {runs}: leave these out, or give another "
            "data.corpus"
        )


def load_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Trainer:
    """A read-only Trainer holding the latest checkpoint of `run_dir` (nothing is written there).

    overrides: `key=value` strings applied to the saved config (e.g. `data.corpus=pydocs` to
    evaluate on another corpus). Missing directory / config / checkpoint: one-line errors.
    """
    from compactlm.config import apply_overrides
    from compactlm.train.loop import Trainer

    saved = read_config(run_dir)
    cfg = apply_overrides(saved, overrides)
    check_same_split(saved, cfg, run_dir)
    trainer = Trainer(cfg, run_dir, readonly=True)
    trainer.restore_or_init(require_checkpoint=True)
    return trainer


def load_model(run_dir: str | Path) -> tuple[Any, nnx.Module]:
    """(config, model) of a run's latest checkpoint without preparing its data (a base or a
    teacher for another corpus); fine-tuning runs come with their base rebuilt."""
    from compactlm.train.finetune import read_base
    from compactlm.train.loop import program_and_state

    cfg = read_config(run_dir)
    program, state = program_and_state(cfg, run_dir, base=read_base(run_dir))
    return cfg, program.model(state)


def latest_checkpoint_dir(run_dir: str | Path) -> Path:
    """checkpoints/<latest step> of a run; CheckpointError when there is none."""
    root = Path(run_dir) / "checkpoints"
    steps = sorted(
        (int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if root.is_dir()
        else ()
    )
    if not steps:
        raise CheckpointError(f"no checkpoint found in {root}")
    return root / str(steps[-1])


def run_fingerprint(run_dir: str | Path) -> str:
    """sha256 over config.json and every file of the latest checkpoint (names and bytes).

    Identifies the exact weights a derived run was made from; reads the whole checkpoint once
    (fine at compact-model sizes: 3 MB for tiny, 500 MB for base).
    """
    digest = hashlib.sha256()
    digest.update(_config_path(run_dir).read_bytes())
    ckpt_dir = latest_checkpoint_dir(run_dir)
    for path in sorted(p for p in ckpt_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(ckpt_dir)).encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
