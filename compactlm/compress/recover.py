"""Recovery after pruning: fine-tune the pruned dense model with its masks held fixed.

The objective multiplies every block kernel by its keep mask before the forward pass, so the
gradient of a pruned weight is exactly zero; AdamW then leaves it at exactly zero too (zero first
and second moments give a zero step, and decoupled decay of 0 is 0) — a test holds it through
training. The masks travel as the train step's ``aux`` argument (not baked into the compiled
step as constants). Runs through the ordinary ``Trainer`` (its loop, logging, checkpoints) in a
sub-directory of the compressed run.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from compactlm.compress import calibrate
from compactlm.train.step import lm_objective


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecoverConfig:
    """`recover.*`: fine-tuning after pruning (0 steps = none)."""

    # Optimizer steps of masked fine-tuning; 0 = no recovery.
    steps: int = 0
    # "finetune": next-token CE on the training split with the mask fixed.
    mode: Literal["finetune"] = "finetune"
    # Peak learning rate (cosine to 10 %, short warmup). 3e-4: a third of `tiny`'s pretraining lr
    # (the model is near a minimum already; larger steps undo more than they recover).
    lr: float = 3e-4
    # Warmup steps of that schedule.
    warmup_steps: int = 10

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"recover.steps must be >= 0, got {self.steps}")
        if self.mode != "finetune":
            raise ValueError(f"recover.mode={self.mode!r}; valid: finetune")
        if not self.lr > 0:
            raise ValueError(f"recover.lr must be > 0, got {self.lr}")


def stack_masks(keeps: dict[tuple[int, str], np.ndarray], n_layers: int) -> dict[str, jnp.ndarray]:
    """{site: [L, K, N] float32} from {(layer, site): [K, N] bool} (the step's aux)."""
    return {
        site: jnp.asarray(
            np.stack([keeps[(layer, site)] for layer in range(n_layers)]), jnp.float32
        )
        for site in calibrate.SITES
    }


def apply_masks(model, masks: dict) -> None:
    """kernel ← kernel · mask for every block linear (inside a trace: on the merged copy)."""
    if model.cfg.scan_layers:
        blocks = [(model.layers, slice(None))]
    else:
        blocks = [(block, layer) for layer, block in enumerate(model.layers)]
    for block, index in blocks:
        for site in calibrate.SITES:
            sub, attr = calibrate.SITES[site]
            lin = getattr(getattr(block, sub), attr)
            lin.kernel[...] = lin.kernel[...] * masks[site][index].astype(lin.kernel[...].dtype)


def masked_objective(z_loss: float = 0.0):
    """Next-token CE of the model with every block kernel multiplied by its mask (aux)."""
    base = lm_objective(z_loss)

    def objective(model, tokens_BT1, rng, masks):
        apply_masks(model, masks)
        return base(model, tokens_BT1, rng, None)

    return objective


def recover(trainer, results: dict, cfg: RecoverConfig, workdir) -> object:
    """Masked fine-tuning of trainer's (pruned) model for cfg.steps in `workdir`; the model."""
    from pathlib import Path

    from compactlm.data.tokenizer import TOKENIZER_FILE
    from compactlm.train.loop import Trainer

    keeps = {key: rec.keep for key, rec in results.items()}
    masks = stack_masks(keeps, trainer.cfg.model.n_layers)
    base = trainer.cfg
    rcfg = dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train,
            steps=cfg.steps,
            eval_every=0,
            checkpoint_every=0,
            progress=False,
            tensorboard=False,
            keep_checkpoints=1,
        ),
        optim=dataclasses.replace(base.optim, lr=cfg.lr, warmup_steps=cfg.warmup_steps),
    )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tok = Path(trainer.workdir) / TOKENIZER_FILE
    if tok.is_file():  # the exact tokenizer the run was trained with (BPE is trained per run)
        (workdir / TOKENIZER_FILE).write_bytes(tok.read_bytes())
    rt = Trainer(rcfg, workdir, objective=masked_objective(base.train.z_loss), aux=masks)
    state = rt.restore_or_init()
    params, frozen = trainer.state.params, trainer.state.frozen
    rt.state = state.replace(params=params, frozen=frozen, opt_state=rt.tx.init(params))
    rt.train()
    model = rt.program.model(rt.state)
    apply_masks(model, masks)  # a no-op on the values (they are exactly zero); states the contract
    return model
