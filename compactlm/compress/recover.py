"""Recovery after pruning: train the pruned dense model with its masks held fixed.

Two modes (`recover.mode`): ``finetune``, next-token cross-entropy on the training split; and
``distill``, distillation from the dense original as the teacher (train/distill_step.py's
objective: the frozen teacher runs in the same jitted step under stop_gradient, the divergence
and its mixing with CE are `recover.distill.*` = train/distill.py's DistillConfig). Either way
the objective multiplies every block kernel by its keep mask before the forward pass, so the
gradient of a pruned weight is exactly zero; AdamW then leaves it at exactly zero too (zero first
and second moments give a zero step, and decoupled decay of 0 is 0) — a test holds it through
training. The masks travel as the train step's ``aux`` argument (not baked into the compiled
step as constants); in distill mode aux = (masks, teacher state). Runs through the ordinary
``Trainer`` (its loop, logging, checkpoints) in a sub-directory of the compressed run.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from compactlm import interrupt
from compactlm.compress import calibrate
from compactlm.train.distill import DistillConfig
from compactlm.train.step import lm_objective

RECOVER_MODES = ("finetune", "distill")


def _recovery_distill() -> DistillConfig:
    # Pure distillation (alpha 1) at temperature 1: the teacher IS the function the mask broke,
    # so the target is its own distribution (no softening, no hard labels); forward KL
    # (Hinton et al. 2015), mean-covering like the CE it replaces.
    return DistillConfig(loss="fkl", temperature=1.0, alpha=1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecoverConfig:
    """`recover.*`: training after pruning with the mask fixed (0 steps = none)."""

    # Optimizer steps of masked recovery; 0 = no recovery.
    steps: int = 0
    # "finetune": next-token CE on the training split; "distill": distillation from the dense
    # original (the run being pruned) as teacher, `recover.distill.*` below.
    mode: Literal["finetune", "distill"] = "finetune"
    # Peak learning rate (cosine to 10 %, short warmup). 3e-4: a third of `tiny`'s pretraining lr
    # (the model is near a minimum already; larger steps undo more than they recover).
    lr: float = 3e-4
    # Warmup steps of that schedule.
    warmup_steps: int = 10
    # Validate every N recovery steps (the recovery curve, eval/bpb in recover/metrics.jsonl,
    # on the command's eval_tokens); 0 = only the command's before / pruned / after.
    eval_every: int = 0
    # mode=distill: divergence, temperature, alpha (CE mix), top_k, on-policy fraction, teacher
    # dtype, feature matching layer for layer (train/distill.py). init_from_teacher / baseline
    # belong to `compactlm distill` only.
    distill: DistillConfig = dataclasses.field(default_factory=_recovery_distill)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"recover.steps must be >= 0, got {self.steps}")
        if self.mode not in RECOVER_MODES:
            raise ValueError(f"recover.mode={self.mode!r}; valid: {', '.join(RECOVER_MODES)}")
        if self.eval_every < 0:
            raise ValueError(f"recover.eval_every must be >= 0, got {self.eval_every}")
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


def masked_distill_objective(cfg: DistillConfig, teacher_graphdef, n_layers: int = 0):
    """Distillation from the teacher (aux[1]) of the model with its kernels masked (aux[0]).

    With cfg.features the pruned model's hidden states are matched to the dense original's, layer
    for layer by default (`distill.feature_layers` picks others): student and teacher have the
    same widths, so no projection (layer-wise distillation for sparse recovery: Kurtic et al.
    2023, "Sparse Fine-tuning for Inference Acceleration of LLMs", SquareHead). n_layers: the
    model's depth, needed only then.
    """
    from compactlm.train.distill_features import feature_pairs
    from compactlm.train.distill_step import make_objective

    pairs = ()
    if cfg.features != "none":
        pairs = feature_pairs(cfg.feature_layers, n_layers, n_layers)
    base = make_objective(cfg, teacher_graphdef, pairs)

    def objective(model, tokens_BT1, rng, aux):
        masks, teacher_state = aux
        apply_masks(model, masks)
        return base(model, tokens_BT1, rng, teacher_state)

    return objective


def recover(
    trainer, results: dict, cfg: RecoverConfig, workdir, *, teacher=None, eval_tokens: int = 0
) -> object:
    """Masked recovery of trainer's (pruned) model for cfg.steps in `workdir`; the model.

    teacher: (graphdef, state) of the dense original (train/distill_run.py::teacher_aux), needed
    by mode=distill. eval_tokens: validation tokens of the periodic evals (0 = all).
    """
    from pathlib import Path

    from compactlm.data.tokenizer import TOKENIZER_FILE
    from compactlm.train.loop import Trainer
    from compactlm.train.metrics import stderr_is_tty

    interrupt.check("stopped before recovery")
    keeps = {key: rec.keep for key, rec in results.items()}
    masks = stack_masks(keeps, trainer.cfg.model.n_layers)
    if cfg.mode == "distill":
        if teacher is None:
            raise ValueError("recover.mode=distill needs the dense teacher")
        objective = masked_distill_objective(cfg.distill, teacher[0], trainer.cfg.model.n_layers)
        # The student's state is donated to every step; a teacher array it shares (the
        # embedding and norms were never pruned) would be donated too: the teacher gets copies.
        aux = (masks, jax.tree.map(jnp.copy, teacher[1]))
    else:
        objective, aux = masked_objective(trainer.cfg.train.z_loss), masks
    base = trainer.cfg
    rcfg = dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train,
            steps=cfg.steps,
            eval_every=cfg.eval_every,
            eval_tokens=eval_tokens,
            checkpoint_every=0,
            # The bar on a terminal only (a log gets tqdm's carriage returns as one long line);
            # the heading printed below names the phase either way.
            progress=base.train.progress and stderr_is_tty(),
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
    rt = Trainer(rcfg, workdir, objective=objective, aux=aux)
    where = "" if rcfg.train.progress else f"; progress in {workdir / 'metrics.jsonl'}"
    print(
        f"recovery ({cfg.mode}, pruning mask fixed): {cfg.steps} steps{where}",
        file=sys.stderr,
        flush=True,
    )
    state = rt.restore_or_init()
    params, frozen = trainer.state.params, trainer.state.frozen
    rt.state = state.replace(params=params, frozen=frozen, opt_state=rt.tx.init(params))
    summary = rt.train()
    if summary["status"] != "done":  # a signal: checkpoint saved; the command stops (130 / 143)
        detail = f"recovery stopped at step {summary['step']} of {cfg.steps}"
        raise interrupt.Interrupted(summary["signal"], f"{detail} (checkpoint in {workdir})")
    model = rt.program.model(rt.state)
    apply_masks(model, masks)  # a no-op on the values (they are exactly zero); states the contract
    return model
