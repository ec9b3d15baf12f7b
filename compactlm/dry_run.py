"""`--dry-run` of the commands that write (finetune, distill, quantize, prune, recipe): every
check the real command makes before its work, then the resolved configuration, what would be
written where, and what would train / stay frozen. Reads configs only: no weights load, no data
is tokenized, nothing is written."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path


def _counts_line(cfg) -> str:
    """Trainable / frozen parameter counts of a config (adapters, or everything)."""
    from flax import nnx

    from compactlm.models.footprint import count_params, weight_bytes
    from compactlm.train.program import trainable_filter

    counts, sizes = count_params(cfg.model), weight_bytes(cfg.model)
    if trainable_filter(cfg) is nnx.LoRAParam:
        trainable, frozen = counts["adapter"], counts["total"]
        what = f"{cfg.model.adapter.kind} adapters on {', '.join(cfg.model.adapter.targets)}"
    else:
        trainable, frozen = counts["total"] + counts["adapter"], 0
        what = "every parameter"
    return (
        f"trainable: {trainable:,} parameters ({what}); frozen: {frozen:,} "
        f"({cfg.model.weight_format} weights, {sizes['total'] - sizes['adapter']:,} bytes)"
    )


def _written(workdir: str | Path, files: str) -> str:
    state = "resumes the run in" if (Path(workdir) / "config.json").exists() else "creates"
    return f"would write: {state} {workdir} ({files})"


def finetune(base_dir: str, overrides: Sequence[str], workdir: str) -> None:
    from compactlm.config import to_json
    from compactlm.train.finetune import finetune_config, schedule_line

    cfg = finetune_config(base_dir, overrides, workdir=workdir)
    print(to_json(cfg))
    print(_written(workdir, "config.json, base.json, tokenizer.json, checkpoints/, eval.json"))
    print(_counts_line(cfg))
    print(schedule_line(cfg))


def distill(teacher_dir: str, preset: str, overrides: Sequence[str], workdir: str) -> None:
    from compactlm.config import apply_overrides, to_json
    from compactlm.models.footprint import count_params
    from compactlm.train.distill_run import DistillArgs, split_overrides, student_config
    from compactlm.train.run_dir import latest_checkpoint_dir, read_config

    ours, rest = split_overrides(overrides)
    dcfg = apply_overrides(DistillArgs(), ours).distill
    from compactlm.train.distill_cache import Cache, is_cache

    cache = Cache(teacher_dir) if is_cache(teacher_dir) else None
    if cache is not None:  # stored teacher logits: the teacher's config is in cache.json
        teacher = cache.teacher_config()
    else:
        teacher = read_config(teacher_dir)
        latest_checkpoint_dir(teacher_dir)
    if dcfg.baseline:
        read_config(dcfg.baseline)
        latest_checkpoint_dir(dcfg.baseline)
    cfg = student_config(preset, rest, teacher)  # what `distill` builds
    # One tokenizer: the teacher's vocabulary. Across tokenizers (distill.cross_tokenizer) the
    # student's own, known without building it (an "hf" student's only from a run: the teacher's).
    from compactlm.data.dataset import configured_vocab_size, padded_vocab_size

    n = configured_vocab_size(cfg.data) if dcfg.cross_tokenizer != "none" else None
    vocab = padded_vocab_size(n) if n is not None else teacher.model.vocab_size
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    print(to_json(cfg))
    print(json.dumps({"distill": dataclasses.asdict(dcfg)}, indent=2))
    print(_written(workdir, "config.json, distill.json, tokenizer.json, checkpoints/, eval.json"))
    print(_counts_line(cfg))
    print(f"frozen teacher: {count_params(teacher.model)['total']:,} parameters ({teacher_dir})")
    if cache is not None:
        m = cache.meta
        print(
            f"stored teacher logits: top {m['top_k']} + tail at T = "
            f"{', '.join(f'{t:g}' for t in m['temperatures'])}, seeds {m['seeds']}, "
            f"{cache.written} of {m['steps'] * len(m['seeds'])} (step, seed) slots written"
        )


def compress(command: str, run_dir: str, overrides: Sequence[str], workdir: str | None) -> None:
    """quantize / prune: the job's keys, the storage it writes, the bytes before and after."""
    from compactlm.compress import export, job
    from compactlm.compress.apply import check_shapes
    from compactlm.config import ConfigError
    from compactlm.models.footprint import weight_bytes
    from compactlm.train.finetune import merged_config

    if command == "quantize":
        spec, prune_cfg = job.parse_quantize(overrides), None
        quant = spec
    else:
        spec = prune_cfg = job.parse_prune(overrides)
        quant = spec.quantize if spec.quantize.method != "none" else None
    out = job._check_workdir(run_dir, workdir, command)
    cfg, shapes = job._check_source(run_dir)
    try:
        export.check_exportable(prune_cfg, quant)
        check_shapes(shapes, prune_cfg, quant)
        if prune_cfg is not None:
            job._check_recover(spec.recover, cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    fmt = export.storage_format(prune_cfg, quant)
    dense = merged_config(cfg)  # an adapter run is merged first; a plain run is unchanged
    print(json.dumps({command: dataclasses.asdict(spec)}, indent=2, default=str))
    if cfg.model.adapter.kind != "none":
        print(f"{run_dir} is a {cfg.model.adapter.kind} adapter run: it would be merged first")
    before = weight_bytes(dense.model)["total"]
    after = weight_bytes(export.compressed_model_config(dense.model, fmt, quant))["total"]
    print(
        f"would write: creates {out} (config.json, compression.json, tokenizer.json, "
        f"checkpoints/) with model.weight_format={fmt}: weights {before:,} -> {after:,} bytes"
    )


def recipe(run_dir: str | None, args: Sequence[str]) -> None:
    """The stages' command lines, as the recipe would run them."""
    import shlex

    from compactlm.config import apply_overrides
    from compactlm.experiments.recipe import RecipeConfig, stage_argv

    cfg = apply_overrides(RecipeConfig(), args)
    stages = [s for s in cfg.stages if not (run_dir and s == "pretrain")]
    source = run_dir or str(Path(cfg.workdir) / "pretrain")
    for stage in stages:
        print(shlex.join(["compactlm", *stage_argv(stage, cfg, source)]))
    print(f"would write: {cfg.workdir} (one run directory per stage, recipe.md)")
