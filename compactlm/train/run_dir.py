"""Existing run directories as inputs: read one's config, fingerprint it, and keep the record
(`base.json`) a fine-tuning run holds of the base it adapts (path, fingerprint, step).

Loading a run's weights is train/program.py (`load_model`) and train/loop.py (`load_run`); this
module reads and writes files only, below both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from compactlm.train.checkpoint import CheckpointError

if TYPE_CHECKING:
    from compactlm.config import Config

BASE_FILE = "base.json"  # a fine-tuning run's record of its base run


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


def read_base(run_dir: str | Path) -> dict | None:
    """The base reference of a fine-tuning run directory, or None for a from-scratch run."""
    path = Path(run_dir) / BASE_FILE
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text())
    except ValueError as e:
        ref = f"not JSON ({e})"
    if not isinstance(ref, dict) or {"run_dir", "fingerprint", "step"} - set(ref):
        raise CheckpointError(
            f"{path} is damaged ({ref if isinstance(ref, str) else 'keys missing'}); it must "
            "hold the base run's run_dir, fingerprint and step as `compactlm finetune` wrote them"
        )
    return ref


def prepare_workdir(base_dir: str | Path, workdir: str | Path) -> None:
    """Record the base (path, fingerprint, step) and copy its tokenizer into a new run dir."""
    from compactlm.data.tokenizer import TOKENIZER_FILE

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ref = {
        "run_dir": str(Path(base_dir).resolve()),
        "fingerprint": run_fingerprint(base_dir),
        "step": int(latest_checkpoint_dir(base_dir).name),
    }
    existing = read_base(workdir)
    if existing is not None and existing != ref:
        raise CheckpointError(
            f"{workdir} was fine-tuned from {existing['run_dir']} (fingerprint "
            f"{existing['fingerprint'][:12]}, step {existing['step']}), not from this base "
            f"({ref['fingerprint'][:12]}, step {ref['step']}); use a new workdir"
        )
    if existing is None:
        (workdir / BASE_FILE).write_text(json.dumps(ref, indent=2) + "\n")
    if not (workdir / TOKENIZER_FILE).is_file():
        shutil.copy(Path(base_dir) / TOKENIZER_FILE, workdir / TOKENIZER_FILE)


def check_base(ref: dict) -> None:
    """The base recorded in a run directory still holds the weights it was trained on."""
    base_dir = ref["run_dir"]
    if not (Path(base_dir) / "config.json").is_file():
        raise CheckpointError(f"the base run {base_dir} recorded in {BASE_FILE} is gone")
    now = run_fingerprint(base_dir)
    if now != ref["fingerprint"]:
        raise CheckpointError(
            f"the base {base_dir} changed since this adapter was trained (fingerprint "
            f"{ref['fingerprint'][:12]} then, {now[:12]} now); adapters only fit the exact base"
        )
