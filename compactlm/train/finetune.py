"""Transfer learning from a run directory: a base's weights under adapters / a packed format.

A fine-tuning run directory holds `base.json` (the base run's path, its content fingerprint and
step; train/run_dir.py). Its model is built from the config (`model.weight_format`, `adapter.*`)
and the base's weights are written into it (models/transfer.py, from train/program.py
`build_from_base`): dense linears copy them, packed ones quantize them at load time
(QLoRA). A base that is itself packed (`compactlm quantize` / `prune` output: int4 / nf4 / fp4 /
2:4 / int4+2:4) keeps its storage: its frozen arrays (codes, scales, metadata) are copied bit for
bit into the same storage class, never dequantized and quantized again, and only adapters train
on top (QLoRA on the compressed model itself). PiSSA adapters take the top-r SVD of the base
weight and leave the residual frozen, DoRA magnitudes start at the base's column norms. With
adapters only training, checkpoints hold the adapters + their optimizer state + step + RNG; the
frozen base is rebuilt from `base.json` (and its fingerprint checked) whenever the run is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
from flax import nnx

from compactlm.models.linear import iter_linears
from compactlm.models.transfer import transfer_weights
from compactlm.models.transformer import Transformer

if TYPE_CHECKING:
    from compactlm.config import Config
    from compactlm.train.loop import Trainer

# Model fields that define a packed base's stored arrays: fixed when the base is packed (a
# change would mean dequantizing and quantizing again, which QLoRA on a compressed base avoids).
STORAGE_FIELDS = ("weight_format", "quant_group_size", "quant_zero_point", "double_quant")

# Model fields a fine-tuning run may change w.r.t. its base (storage, adapters, numerics and
# execution); anything else would not fit the base's weights.
CHANGEABLE_MODEL_FIELDS = (
    "weight_format",
    "quant_group_size",
    "double_quant",
    "adapter",
    "compute_dtype",
    "scan_layers",
    "remat",
    "attention_impl",
    # training-time input noise (NEFTune, span masking): regularisers of the fine-tune itself
    "neftune_alpha",
    "span_mask_rate",
)


# Fine-tuning's own schedule. Inheriting the base's pre-training optim.* would warm up for 100
# steps of a 100-step fine-tune (the learning rate peaking at the last step). Warm-up is a
# fraction of the fine-tune's own steps (10 %: what this project's transfer sweeps settled on,
# 15 of 150 and 30 of 300; PEFT / TRL recipes use 3-10 %); full fine-tuning starts from a
# third of the base's peak rate (those sweeps' full rows: 1e-3 after tiny's 3e-3), adapters keep
# it (LoRA trains at a larger rate than full fine-tuning: B starts at zero, and alpha / r
# scales the update). Any optim.* key given on the command line wins.
FINETUNE_WARMUP_FRACTION = 0.1
FULL_FINETUNE_LR_FACTOR = 1 / 3


def _config_error(msg: str) -> Exception:
    from compactlm.config import ConfigError

    return ConfigError(msg)


def finetune_config(
    base_dir: str | Path, overrides: Sequence[str], *, workdir: str | Path | None = None
) -> Config:
    """The base run's config with `overrides` applied; model shape changes are refused; optim.*
    starts from fine-tuning defaults (`finetune_optim`), or, when `workdir` already holds this
    fine-tune, from its saved settings (so that a resume with more steps is the same run)."""
    from compactlm.config import apply_overrides
    from compactlm.train.run_dir import latest_checkpoint_dir, read_base, read_config

    base = read_config(base_dir)
    latest_checkpoint_dir(base_dir)  # CheckpointError when the base has none
    if read_base(base_dir) is not None:
        raise _config_error(
            f"{base_dir} is itself an adapter run; merge it first (compactlm merge "
            f"{base_dir} workdir=DIR) and fine-tune the merged run"
        )
    cfg = apply_finetune_overrides(base, overrides, base_dir=base_dir)
    saved = Path(workdir) / "config.json" if workdir is not None else None
    if saved is not None and saved.is_file():  # resuming: the defaults fixed at its start
        optim = read_config(workdir).optim
    else:
        optim = finetune_optim(base.optim, cfg)
    return apply_overrides(dataclasses.replace(cfg, optim=optim), _optim_overrides(overrides))


def _optim_overrides(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].strip().startswith("optim.")]


def finetune_optim(base_optim: Any, cfg: Config) -> Any:
    """The fine-tuning defaults of optim.* for `cfg` (the fine-tune's train.steps and adapter),
    from the base run's optimizer settings."""
    warmup = math.ceil(FINETUNE_WARMUP_FRACTION * cfg.train.steps)
    lr = base_optim.lr
    if cfg.model.adapter.kind == "none":
        lr = base_optim.lr * FULL_FINETUNE_LR_FACTOR
    return dataclasses.replace(base_optim, warmup_steps=warmup, lr=lr)


def schedule_line(cfg: Config) -> str:
    """One line saying what the fine-tune's learning rate does, and a warning where the warm-up
    leaves no decay (its peak would come at, or after, the last step)."""
    o, steps = cfg.optim, cfg.train.steps
    line = (
        f"schedule: {o.kind}, lr {o.lr:g} peak after {o.warmup_steps} warm-up steps, "
        f"{o.schedule} to {o.lr * o.min_lr_ratio:g} at step {steps}"
    )
    if o.warmup_steps >= steps:
        line += (
            f"; warning: optim.warmup_steps={o.warmup_steps} >= train.steps={steps}: the learning "
            f"rate peaks at the last step (default: {FINETUNE_WARMUP_FRACTION:.0%} of the steps)"
        )
    return line


def apply_finetune_overrides(
    base: Config, overrides: Sequence[str], *, base_dir: str | Path | None = None
) -> Config:
    """`base` (a run's config) with `overrides` applied; model shape changes are refused.

    base_dir: the base run, where a packed base's storage is checked against its checkpoint;
    None checks the configs alone (sweep files are validated this way before any base exists).
    """
    from compactlm.config import apply_overrides, diff

    cfg = apply_overrides(base, overrides)
    changeable = CHANGEABLE_MODEL_FIELDS
    fmt = base.model.weight_format
    where = base_dir if base_dir is not None else "the base run"
    if fmt != "dense":
        changeable = tuple(f for f in changeable if f not in STORAGE_FIELDS)
        if base_dir is not None:
            _check_packed_base(base_dir, fmt, cfg)
    fixed = {
        k: v
        for k, v in diff(base, cfg).items()
        if k.startswith("model.") and k.split(".")[1] not in changeable
    }
    if fixed and fmt != "dense" and any(k.split(".")[1] in STORAGE_FIELDS for k in fixed):
        detail = "; ".join(f"{k}: base {a!r}, asked {b!r}" for k, (a, b) in fixed.items())
        raise _config_error(
            f"base {where} is stored {fmt}: adapters train on exactly that storage ({detail}); "
            "for another storage, compress the base's dense source run again"
        )
    if fixed:
        detail = "; ".join(f"{k}: base {a!r}, asked {b!r}" for k, (a, b) in fixed.items())
        raise _config_error(
            f"fine-tuning keeps the base's shape ({detail}); changeable model keys: "
            + ", ".join(f"model.{k}" for k in changeable)
        )
    return cfg


def _check_packed_base(base_dir, fmt: str, cfg: Config) -> None:
    """A packed base trains through adapters only, and none that rewrites the base."""
    from compactlm.train.program import trainable_filter

    adapter = cfg.model.adapter
    if adapter.kind == "none" or trainable_filter(cfg) is not nnx.LoRAParam:
        raise _config_error(
            f"base {base_dir} stores packed {fmt} weights (frozen): fine-tune it with adapters "
            "(adapter.kind=lora or dora, train.trainable=auto|adapters), or fully fine-tune its "
            "dense source run"
        )
    if adapter.init == "pissa":
        raise _config_error(
            f"adapter.init=pissa rewrites the base (W − B·A, quantized again), but base "
            f"{base_dir} is kept exactly as stored ({fmt}); use adapter.init=kaiming|gaussian"
        )


def merged_config(cfg: Config) -> Config:
    """The config of the dense model an adapter / packed run merges into."""
    from compactlm.models.config import AdapterConfig

    model = dataclasses.replace(cfg.model, weight_format="dense", adapter=AdapterConfig())
    return dataclasses.replace(
        cfg, model=model, train=dataclasses.replace(cfg.train, trainable="auto")
    )


def merged_model(src: Trainer) -> Transformer:
    """The dense model an adapter run computes: `src`'s adapters folded into its base (a packed
    base dequantized first), in a fresh model of `merged_config(src.cfg)`."""
    cfg = merged_config(src.cfg)
    model = Transformer(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    transfer_weights(model, src.program.model(src.state), merge=True)
    return model


def merged_trainer(src: Trainer) -> Trainer:
    """A read-only Trainer on `src`'s run directory holding `merged_model(src)` at src's step:
    what `compactlm merge` would write, in memory (quantize / prune of an adapter run)."""
    from compactlm.train.loop import Trainer
    from compactlm.train.step import state_from_model

    cfg = merged_config(src.cfg)
    out = Trainer(cfg, src.workdir, readonly=True)
    out.base = None  # the merged model stands alone: nothing is rebuilt from base.json
    state = state_from_model(out.program, merged_model(src), seed=cfg.train.seed)
    out.state = state.replace(step=src.state.step)
    return out


def trainable_summary(model: Transformer, trainable: Any) -> dict[str, float]:
    """Parameter counts and bytes: what trains, what is frozen, and the packed bits per param."""
    params = nnx.state(model, trainable)
    rest = nnx.state(model, nnx.Not(trainable))
    n_train = sum(int(x.size) for x in jax.tree.leaves(params))
    bytes_frozen = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(rest))
    packed = [lin for _, lin in iter_linears(model) if hasattr(lin, "bits_per_parameter")]
    out = {
        "trainable_params": n_train,
        "trainable_bytes": sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params)),
        "frozen_bytes": bytes_frozen,
    }
    if packed:
        bits = sum(lin.bits_per_parameter() * lin.in_features * lin.out_features for lin in packed)
        weights = sum(lin.in_features * lin.out_features for lin in packed)
        out["packed_bits_per_param"] = bits / weights
    return out
