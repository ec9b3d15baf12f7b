"""`compactlm quantize` and `compactlm prune`: a trained run in, a compressed run directory out.

Both load the run (its latest checkpoint), evaluate it, draw the calibration set from its
training split, compress the block linears (``apply.apply_compression``), optionally recover
(pruning: masked fine-tuning, or distillation from the dense run), evaluate the result and
write it as a new run directory holding the packed weights (``export.py``), which ``eval`` /
``generate`` / ``info`` load like any run. The printed report: validation loss and bits per
byte before / after, bytes of weights, time.

Nothing is written to the source run; the output directory must be new (or empty).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from compactlm.compress.calibrate import CalibConfig
from compactlm.compress.prune import PruneConfig
from compactlm.compress.quantize import QUANT_METHODS, QuantConfig
from compactlm.compress.recover import RecoverConfig
from compactlm.config import ConfigError, apply_overrides


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeJob(QuantConfig):
    """`compactlm quantize RUN_DIR key=value ...`: QuantConfig's keys plus these."""

    # As QuantConfig.method, without "none" (which only the prune command's section has).
    method: Literal["rtn", "gptq", "awq"] = "rtn"
    calib: CalibConfig = dataclasses.field(default_factory=CalibConfig)
    # Validation tokens scored before and after (0 = the whole validation split).
    eval_tokens: int = 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruneJob(PruneConfig):
    """`compactlm prune RUN_DIR key=value ...`: PruneConfig's keys plus these."""

    # Quantize the kept weights after pruning (and recovery). Off unless a quantize.* key is
    # given; quantize.method then defaults to gptq after sparsegpt (the joint OBS of the
    # SparseGPT paper), rtn otherwise. With pattern 2:4 this is the sparse24_int4 format.
    quantize: QuantConfig = dataclasses.field(default_factory=lambda: QuantConfig(method="none"))
    recover: RecoverConfig = dataclasses.field(default_factory=RecoverConfig)
    calib: CalibConfig = dataclasses.field(default_factory=CalibConfig)
    # Validation tokens scored before and after (0 = the whole validation split).
    eval_tokens: int = 0


def parse_quantize(overrides: Sequence[str]) -> QuantizeJob:
    job = apply_overrides(QuantizeJob(), overrides)
    if job.method not in QUANT_METHODS:
        raise ConfigError(f"method={job.method!r}; valid methods: {', '.join(QUANT_METHODS)}")
    return job


def parse_prune(overrides: Sequence[str]) -> PruneJob:
    job = apply_overrides(PruneJob(), overrides)
    wants_quant = any(o.split("=", 1)[0].startswith("quantize.") for o in overrides)
    if wants_quant and job.quantize.method == "none":
        default = "gptq" if job.method == "sparsegpt" else "rtn"
        job = apply_overrides(job, [f"quantize.method={default}"])
    if job.quantize.method == "awq":
        raise ConfigError("quantize.method=awq after pruning is not supported; use rtn or gptq")
    if job.quantize.method != "none" and job.pattern == "2:4" and job.quantize.format != "int4":
        raise ConfigError(
            f"pattern=2:4 with quantize.format={job.quantize.format!r}: 2:4 values are stored as "
            "symmetric int4 (sparse24_int4); use quantize.format=int4"
        )
    return job


def _check_source(run_dir: str):
    """The source run's config, and a shape-only model of what will be compressed, from
    config.json alone: every refusal that the config can tell comes before any weight loads.
    Already compressed runs are refused; an adapter run is compressed merged (`_load_source`)."""
    from compactlm.train.finetune import merged_config
    from compactlm.train.run_dir import read_config
    from compactlm.train.step import abstract_model

    cfg = read_config(run_dir)
    fmt, adapter = cfg.model.weight_format, cfg.model.adapter.kind
    if adapter == "none" and (fmt != "dense" or (Path(run_dir) / "compression.json").exists()):
        raise ConfigError(
            f"{run_dir} is already compressed (model.weight_format={fmt}); compress the dense "
            "run it was made from"
        )
    dense = dataclasses.replace(merged_config(cfg).model, scan_layers=False)
    return cfg, abstract_model(dense)


def _load_source(run_dir: str, command: str):
    """The run to compress, as a Trainer. An adapter run (LoRA / DoRA, on a dense or packed
    base) is merged first, as `compactlm merge ... dequantize=true` would: what the user
    fine-tuned is what gets compressed, and what is measured after is what is written (the
    written run has no adapters)."""
    from compactlm.train.finetune import merged_trainer
    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    fmt, adapter = trainer.cfg.model.weight_format, trainer.cfg.model.adapter.kind
    if adapter == "none":
        return trainer
    base = f"{fmt} base dequantized, " if fmt != "dense" else ""
    print(
        f"{command}: {run_dir} is a {adapter} adapter run: merging its adapters into the base "
        f"first ({base}as `compactlm merge`); the merged model is what is compressed",
        flush=True,
    )
    return merged_trainer(trainer)


def _calibration(trainer, calib: CalibConfig, seq_len: int):
    """The calibration windows; a set the training split cannot supply is the user's error."""
    from compactlm.compress.calibrate import calibration_tokens

    try:
        tokens = calibration_tokens(trainer.data.train_tokens, calib, seq_len)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"calibration: {tokens.shape[0]} windows of {tokens.shape[1]} tokens", flush=True)
    return tokens


def _merged_adapter(run_dir: str) -> str | None:
    """The adapter kind merged into the base before compressing (None: a plain run)."""
    from compactlm.train.run_dir import read_config

    kind = read_config(run_dir).model.adapter.kind
    return None if kind == "none" else kind


def _check_workdir(run_dir: str, workdir: str | None, command: str) -> Path:
    from compactlm.train.workdir import check_workdir

    if not workdir:
        raise ConfigError("give the output directory: workdir=OUT")
    check_workdir(workdir, command)  # RUN_DIR itself, or any other run, is refused here
    return Path(workdir)


def _fmt_row(label: str, ev: dict) -> str:
    return f"  {label:<10} loss {ev['loss']:.4f}  bpb {ev['bpb']:.4f}"


def _report(title: str, before: dict, after: dict, sizes: dict, seconds: float, extra=()) -> None:
    print(title)
    print(_fmt_row("before", before))
    for label, ev in extra:
        print(_fmt_row(label, ev))
    print(_fmt_row("after", after))
    print(
        f"  delta      loss {after['loss'] - before['loss']:+.4f}  bpb "
        f"{after['bpb'] - before['bpb']:+.4f}"
    )
    ratio = sizes["linear_bytes"] / sizes["dense_linear_bytes"]
    print(
        f"  weights    block linears {sizes['dense_linear_bytes']:,} → "
        f"{sizes['linear_bytes']:,} bytes ({ratio:.3f}x, "
        f"{sizes['linear_bits_per_weight']:.3f} bits/weight); whole model "
        f"{sizes['dense_model_bytes']:,} → {sizes['model_bytes']:,} bytes"
    )
    if sizes.get("note"):
        print(f"  note       {sizes['note']}")
    print(f"  time       {seconds:.1f}s")


def _check_recover(rcfg: RecoverConfig, cfg) -> None:
    """What recover.distill.* can only check against the run (vocabulary, sequence length)."""
    if rcfg.distill.init_from_teacher or rcfg.distill.baseline:
        raise ValueError(
            "recover.distill.init_from_teacher / baseline do not apply to recovery (the "
            "student is the pruned model itself)"
        )
    if rcfg.steps == 0 or rcfg.mode != "distill":
        return
    rcfg.distill.check_vocab(cfg.model.vocab_size)
    if rcfg.distill.features != "none":
        from compactlm.train.distill_features import feature_pairs

        n = cfg.model.n_layers
        feature_pairs(rcfg.distill.feature_layers, n, n)  # raises on a pair out of range
    if rcfg.distill.on_policy > 0 and rcfg.distill.on_policy_prompt >= cfg.train.seq_len:
        raise ValueError(
            f"recover.distill.on_policy_prompt={rcfg.distill.on_policy_prompt} leaves nothing to "
            f"sample in train.seq_len={cfg.train.seq_len} tokens; use a shorter prompt"
        )


def _model_and_state(trainer):
    """A copy of the trainer's model to compress in place: merging a state shares its
    Variables, so compressing `program.model(state)` itself would also rewrite `state`."""
    from flax import nnx

    return nnx.clone(trainer.program.model(trainer.state))


def _set_model(trainer, model) -> None:
    from flax import nnx

    _, params, frozen = nnx.split(model, trainer.program.trainable, ...)
    trainer.state = trainer.state.replace(params=params, frozen=frozen)


def quantize_run(run_dir: str, overrides: Sequence[str], *, workdir: str | None) -> dict:
    """The `compactlm quantize` command; returns the report it wrote to compression.json."""
    from compactlm.compress import export
    from compactlm.compress.apply import apply_compression, check_shapes, needs_calibration
    from compactlm.train.workdir import claim_workdir

    job = parse_quantize(overrides)
    out = _check_workdir(run_dir, workdir, "quantize")
    _, shapes = _check_source(run_dir)
    try:
        export.check_exportable(None, job)
        check_shapes(shapes, None, job)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    trainer = _load_source(run_dir, "quantize")
    model = _model_and_state(trainer)
    t0 = time.perf_counter()
    tokens = None  # (drawn first: a calibration set the split cannot supply fails at once)
    if needs_calibration(None, job):
        tokens = _calibration(trainer, job.calib, trainer.cfg.train.seq_len)
    before = trainer.evaluate(job.eval_tokens)
    t1 = time.perf_counter()
    results = apply_compression(model, quant=job, tokens=tokens, batch_size=job.calib.batch_size)
    if export.double_quant(job):
        export.apply_double_quant(model, results)
    seconds = time.perf_counter() - t1
    _set_model(trainer, model)
    after = trainer.evaluate(job.eval_tokens)
    claim_workdir(out, "quantize")
    sizes = export.write_run(trainer, results, out, prune_cfg=None, quant=job)
    report = {
        "command": "quantize",
        "source": str(run_dir),
        "merged_adapter": _merged_adapter(run_dir),
        "config": dataclasses.asdict(job),
        "before": before,
        "after": after,
        "sizes": sizes,
        "compress_seconds": seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    (out / "compression.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _report(
        f"quantize {job.method} {job.format} bits={job.bits} group_size={job.group_size or 'K'}"
        f"{' double_quant' if job.double_quant else ''} → {out}",
        before,
        after,
        sizes,
        seconds,
    )
    return report


def prune_run(run_dir: str, overrides: Sequence[str], *, workdir: str | None) -> dict:
    """The `compactlm prune` command; returns the report it wrote to compression.json."""
    from compactlm.compress import export
    from compactlm.compress.apply import (
        apply_compression,
        check_shapes,
        needs_calibration,
        phase_label,
        refresh_weights,
    )
    from compactlm.train.workdir import claim_workdir

    job = parse_prune(overrides)
    quant = job.quantize if job.quantize.method != "none" else None
    out = _check_workdir(run_dir, workdir, "prune")
    source_cfg, shapes = _check_source(run_dir)
    try:
        export.check_exportable(job, quant)
        check_shapes(shapes, job, quant)
        _check_recover(job.recover, source_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    trainer = _load_source(run_dir, "prune")
    model = _model_and_state(trainer)
    t0 = time.perf_counter()
    seq_len = trainer.cfg.train.seq_len
    tokens = None  # (drawn first: a calibration set the split cannot supply fails at once)
    if needs_calibration(job, quant):
        tokens = _calibration(trainer, job.calib, seq_len)
    before = trainer.evaluate(job.eval_tokens)
    t1 = time.perf_counter()
    extra = []
    prune_only = job.recover.steps > 0 and quant is not None
    results = apply_compression(
        model,
        prune_cfg=job,
        quant=None if prune_only else quant,
        tokens=tokens,
        batch_size=job.calib.batch_size,
    )
    seconds = time.perf_counter() - t1
    teacher = None
    if job.recover.steps > 0 and job.recover.mode == "distill":
        from compactlm.train.distill_run import teacher_aux

        teacher = teacher_aux(trainer, job.recover.distill.teacher_dtype)  # still the dense run
    _set_model(trainer, model)
    claim_workdir(out, "prune")  # recovery writes its run into OUT/recover
    if job.recover.steps > 0:
        from compactlm.compress.recover import recover

        extra.append(("pruned", trainer.evaluate(job.eval_tokens)))
        t2 = time.perf_counter()
        model = recover(
            trainer,
            results,
            job.recover,
            out / "recover",
            teacher=teacher,
            eval_tokens=job.eval_tokens,
        )
        seconds += time.perf_counter() - t2
        _set_model(trainer, model)
        refresh_weights(model, results)  # export the recovered weights, not the pruned ones
        if quant is not None:
            extra.append(("recovered", trainer.evaluate(job.eval_tokens)))
            keeps = {key: rec.keep for key, rec in results.items()}
            if needs_calibration(None, quant):
                tokens = _calibration(trainer, job.calib, seq_len)
            t3 = time.perf_counter()
            results = apply_compression(
                model,
                quant=quant,
                keeps=keeps,
                pattern=job.pattern,
                tokens=tokens,
                batch_size=job.calib.batch_size,
                label="after recovery: " + phase_label(None, quant, fixed_mask=job.pattern),
            )
            seconds += time.perf_counter() - t3
            _set_model(trainer, model)
    if export.double_quant(quant):
        export.apply_double_quant(model, results)
        _set_model(trainer, model)
    after = trainer.evaluate(job.eval_tokens)
    sizes = export.write_run(trainer, results, out, prune_cfg=job, quant=quant)
    report = {
        "command": "prune",
        "source": str(run_dir),
        "merged_adapter": _merged_adapter(run_dir),
        "config": dataclasses.asdict(job),
        "before": before,
        **{label: ev for label, ev in extra},
        "after": after,
        "sizes": sizes,
        "compress_seconds": seconds,
        "total_seconds": time.perf_counter() - t0,
    }
    (out / "compression.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    what = f"prune {job.method} {job.pattern}"
    if job.pattern == "unstructured":
        what += f" sparsity={job.sparsity}"
    if quant is not None:
        what += f" + {quant.method} {quant.format} bits={quant.bits}"
    if job.recover.steps:
        what += f" + recover ({job.recover.mode}) {job.recover.steps} steps"
    _report(f"{what} → {out}", before, after, sizes, seconds, extra)
    return report
