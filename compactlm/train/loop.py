"""The training loop: data, sharded state, checkpoints, exact resume, metrics, progress, signals."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from compactlm import interrupt
from compactlm.config import Config, ConfigError, diff, to_dict, to_json
from compactlm.train import checkpoint as ckpt
from compactlm.train.config import TrainConfig
from compactlm.train.mesh import batch_divisor, maybe_initialize_distributed, shard_batch
from compactlm.train.optim import make_schedule
from compactlm.train.program import adapter_only, config_mesh, make_program, restore_state
from compactlm.train.run_dir import check_same_split, read_base, read_config
from compactlm.train.step import Program, TrainState

__all__ = ["TrainConfig", "Trainer", "load_run", "run"]


class TrainingDiverged(RuntimeError):
    """Loss or gradient became NaN/Inf; names the step and the last good checkpoint."""


# Keys whose change is allowed when re-running a train command on an existing run directory:
# they extend or re-instrument the run without changing what the first N steps computed.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_tokens",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.tensorboard",
)


def resolve_vocab(cfg: Config, vocab_size: int) -> Config:
    """Set model.vocab_size from the tokenizer, padded to a multiple of 64 (divides any tensor
    axis up to 64 and keeps logits matmuls aligned, as nanoGPT's 50304)."""
    from compactlm.data.config import padded_vocab_size

    padded = padded_vocab_size(vocab_size)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=padded))


def configured_vocab(cfg: Config) -> Config:
    """resolve_vocab for the tokenizer the config names, without building it (dry runs, info,
    pick); an "hf" tokenizer keeps the config's model.vocab_size."""
    from compactlm.data.dataset import configured_vocab_size

    return resolve_vocab(cfg, configured_vocab_size(cfg.data) or cfg.model.vocab_size)


def _check_resume(saved: Config, cfg: Config) -> Config:
    changes = diff(saved, cfg)
    bad = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if bad:
        detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in bad.items())
        raise ConfigError(
            f"the run directory holds a run with a different config ({detail}); use a new "
            f"workdir, or change only {', '.join(RESUMABLE_CHANGES)} when resuming"
        )
    if "train.steps" in changes and jax.process_index() == 0:
        # Extending (or shortening) a run is allowed; say what it does to the schedule, which
        # is a function of the total (warm-up then decay to min_lr_ratio at train.steps).
        was, now = changes["train.steps"]
        print(
            f"train.steps {was} -> {now}: the learning-rate schedule now decays to step {now}; "
            "the remaining steps follow it, not the saved run's",
            file=sys.stderr,
        )
    return cfg


class Trainer:
    """Owns a run directory: builds everything from a config and trains / evaluates it."""

    def __init__(
        self,
        cfg: Config,
        workdir: str | Path,
        *,
        readonly: bool = False,
        objective: Any = None,
        aux: Any = None,
        aux_sharding: Any = None,
        model_fn: Any = None,
    ) -> None:
        """readonly: load an existing run (eval / generate) without writing into its directory.

        objective / aux / aux_sharding / model_fn: see `train.step.build` (default: next-token
        CE, no aux, a Transformer); `aux` is passed to every train step (distillation: the
        teacher's state).
        """
        from compactlm.data import prepare_data

        maybe_initialize_distributed(cfg.mesh)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        # A second trainer on the same directory refuses before it writes anything (the lock is
        # released when train() returns, or with this object).
        self._lock = None
        if not readonly and jax.process_index() == 0:
            self._lock = ckpt.RunLock(self.workdir).acquire()
        self.data = prepare_data(cfg.data, run_dir=self.workdir)
        cfg = resolve_vocab(cfg, self.data.tokenizer.vocab_size)
        config_path = self.workdir / "config.json"
        if config_path.exists() and not readonly:
            cfg = _check_resume(read_config(self.workdir), cfg)
        if jax.process_index() == 0 and not readonly:
            config_path.write_text(to_json(cfg) + "\n")
            (self.workdir / "data.json").write_text(
                json.dumps(self.data.info(), indent=2, sort_keys=True, default=str) + "\n"
            )
        self.cfg = cfg
        t = cfg.train
        from compactlm.data.dataset import batch_offsets

        self.mesh = config_mesh(cfg)
        if (t.batch_size // t.grad_accum) % batch_divisor(self.mesh):
            raise ConfigError(
                f"micro-batch {t.batch_size // t.grad_accum} (train.batch_size / "
                f"train.grad_accum) is not divisible by the data x fsdp mesh size "
                f"{batch_divisor(self.mesh)}; change train.batch_size or mesh.*"
            )
        # Too small a corpus for seq_len fails here, before any file of the run is opened.
        batch_offsets(self.data.train_tokens.size, seed=0, step=0, batch_size=1, seq_len=t.seq_len)
        self.aux = aux
        self.program: Program = make_program(
            cfg,
            mesh=self.mesh,
            objective=objective,
            aux=aux,
            aux_sharding=aux_sharding,
            model_fn=model_fn,
        )
        self.tx = self.program.tx
        self.schedule = make_schedule(cfg.optim, t.steps)
        self.manager = ckpt.make_manager(self.workdir, max_to_keep=t.keep_checkpoints)
        self.state: TrainState | None = None
        self.base = read_base(self.workdir)  # fine-tuning: the base run this one adapts
        # objective metrics shown on the progress bar beside the loss (all go to metrics.jsonl)
        self.progress_metrics: tuple[str, ...] = ()

    # -- state -----------------------------------------------------------------------------
    def restore_or_init(self, *, require_checkpoint: bool = False) -> TrainState:
        # An unreadable latest checkpoint: fall back to the newest readable one (a training run
        # moves the unreadable ones aside so that it can save those steps again).
        self.state = restore_state(
            self.program,
            self.cfg,
            self.manager,
            self.base,
            require_checkpoint=require_checkpoint,
            move_aside=not self.readonly,
        )
        return self.state

    def save(self, metrics: dict | None = None) -> Path:
        step = int(self.state.step)
        meta = {
            "step": step,
            "seed": self.cfg.train.seed,
            "time": time.time(),
            "metrics": metrics or {},
        }
        saved = self.state
        if adapter_only(self.program, self.base):  # the base is rebuilt from base.json
            saved = saved.replace(frozen=None)
        ckpt.save(
            self.manager, step, saved, meta, to_dict(self.cfg), extra_key=self.program.extra_key
        )
        return Path(self.manager.directory) / str(step)

    # -- data ------------------------------------------------------------------------------
    def batch(self, step: int) -> jax.Array:
        from compactlm.data import get_batch

        t, d = self.cfg.train, self.cfg.data
        if d.augment:  # training batches only: evaluate() reads the validation tokens directly
            from compactlm.data.augment import augmented_batch

            tok = self.data.tokenizer
            if getattr(self, "_ordinary_ids", None) is None:  # once: BPE / HF build it in Python
                self._ordinary_ids = np.flatnonzero(tok.token_byte_lengths() > 0)
            tokens = augmented_batch(
                self.data.train_tokens,
                names=d.augment,
                rate=d.augment_rate,
                ordinary_ids=self._ordinary_ids,
                fill_id=tok.eos_id,
                seed=t.seed,
                step=step,
                batch_size=t.batch_size,
                seq_len=t.seq_len,
            )
        else:
            tokens = get_batch(
                self.data.train_tokens,
                seed=t.seed,
                step=step,
                batch_size=t.batch_size,
                seq_len=t.seq_len,
            )
        tokens = tokens.reshape(t.grad_accum, t.batch_size // t.grad_accum, t.seq_len + 1)
        return shard_batch(tokens, self.program.accum_sharding)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, max_tokens: int = 0) -> dict[str, float]:
        from compactlm.evaluation.perplexity import evaluate_tokens

        t = self.cfg.train
        return evaluate_tokens(
            self.program,
            self.state,
            self.data.val_tokens,
            byte_lengths=self.data.tokenizer.token_byte_lengths(),
            batch_size=t.batch_size // t.grad_accum,
            seq_len=t.seq_len,
            max_tokens=max_tokens,
        )

    # -- training --------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to cfg.train.steps from wherever the run directory is; returns a summary."""
        try:
            return self._train()
        finally:
            for closable in getattr(self, "_closables", ()):  # on an error too: no atexit noise
                closable.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _train(self) -> dict[str, Any]:
        from compactlm.train.metrics import MetricsWriter, Progress

        t = self.cfg.train
        state = self.state if self.state is not None else self.restore_or_init()
        start = int(state.step)
        tokens_per_step = t.batch_size * t.seq_len
        writer = MetricsWriter(self.workdir, tensorboard=t.tensorboard)
        progress = Progress(total=t.steps, initial=start, enabled=t.progress)
        self._closables = (progress, writer)
        last_ckpt = ckpt.latest_step(self.manager)
        summary: dict[str, Any] = {"start_step": start, "status": "done"}
        pending: tuple[int, dict] | None = None  # metrics of the step in flight (one-step lag)
        window_start, window_tokens = time.perf_counter(), 0
        # Wall and process CPU seconds (all threads, user + system) since this train() began:
        # recorded with every log and eval row, so a curve can be drawn against either.
        wall0, cpu0 = window_start, time.process_time()

        def clock() -> dict[str, float]:
            return {
                "time/wall_s": time.perf_counter() - wall0,
                "time/cpu_s": time.process_time() - cpu0,
            }

        def flush(step: int, metrics: dict) -> None:
            nonlocal window_start, window_tokens
            host = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(math.isfinite(v) for v in host.values()):
                where = (
                    f"last good checkpoint: step {last_ckpt} in {self.manager.directory}"
                    if last_ckpt is not None
                    else "no checkpoint was saved yet"
                )
                raise TrainingDiverged(f"non-finite loss/gradient at step {step} ({host}); {where}")
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                record = {
                    "step": step,
                    "train/loss": host["loss"],
                    "train/nll": host["nll"],
                    "train/lr": float(self.schedule(step - 1)),
                    "train/grad_norm": host["grad_norm"],
                    "tokens/s": tps,
                    **clock(),
                }
                # the objective's own metrics are already named split/name (distill/divergence)
                record.update({k: v for k, v in sorted(host.items()) if "/" in k})
                writer.write(record)
                extra = {k.split("/")[-1]: host[k] for k in self.progress_metrics if k in host}
                progress.update_to(step, loss=host["loss"], tps=tps, extra=extra)

        # SIGINT / SIGTERM: save a checkpoint at the next step and return status "interrupted"
        # (the commands turn it into exit 130 / 143: compactlm/interrupt.py).
        with interrupt.handling():
            for step in range(start, t.steps):
                batch = self.batch(step)
                state, metrics = self.program.train_step(state, batch, self.aux)
                self.state = state
                window_tokens += tokens_per_step
                if pending is not None:
                    flush(*pending)
                pending = (step + 1, metrics)
                done = step + 1
                if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                    flush(*pending)
                    pending = None
                    ev = self.evaluate(max_tokens=t.eval_tokens)
                    writer.write(
                        {"step": done, **{f"eval/{k}": v for k, v in ev.items()}, **clock()}
                    )
                    progress.note(f"step {done}: eval loss {ev['loss']:.4f} bpb {ev['bpb']:.3f}")
                stop = interrupt.received()
                if (t.checkpoint_every and done % t.checkpoint_every == 0) or stop:
                    if pending is not None:
                        flush(*pending)
                        pending = None
                    self.save()
                    last_ckpt = done
                if stop:
                    progress.close()
                    detail = (
                        f"stopped at step {done}; checkpoint saved in {self.manager.directory}; "
                        "re-run the same command to resume"
                    )
                    summary.update(status="interrupted", step=done, signal=stop, detail=detail)
                    writer.close()
                    return summary
            if pending is not None:
                flush(*pending)
        progress.close()
        if ckpt.latest_step(self.manager) != int(self.state.step):
            self.save()
        summary["step"] = int(self.state.step)
        writer.close()
        return summary


def run(cfg: Config, workdir: str | Path) -> Trainer:
    """Train (or resume) the run in `workdir`; returns the Trainer holding the final state."""
    trainer = Trainer(cfg, workdir)
    trainer.restore_or_init()
    trainer.summary = trainer.train()
    return trainer


def load_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Trainer:
    """A read-only Trainer holding the latest checkpoint of `run_dir` (nothing is written there).

    overrides: `key=value` strings applied to the saved config (e.g. `data.corpus=pydocs` to
    evaluate on another corpus). Missing directory / config / checkpoint: one-line errors.
    """
    from compactlm.config import apply_overrides

    saved = read_config(run_dir)
    cfg = apply_overrides(saved, overrides)
    check_same_split(saved, cfg, run_dir)
    trainer = Trainer(cfg, run_dir, readonly=True)
    trainer.restore_or_init(require_checkpoint=True)
    return trainer


def load_metrics(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash (kill -9 mid-write); the resumed run rewrites it
    return records
