"""Feature distillation: cosine or L2 between chosen student and teacher hidden states.

Hidden state l of a model is its residual stream after block l (l = 1 … n_layers; l = 0 is
the embedding output), before the final norm (`Transformer(..., return_hidden=True)`).
`distill.feature_layers="s:t,s:t"` pairs student state s with teacher state t; the default
pairs every student block output l with the teacher's l · L_teacher / L_student (the DistilBERT
spacing of train/distill_init.py: a 4-layer student of an 8-layer teacher matches 1:2, 2:4,
3:6, 4:8). Per pair and position, with u the student's state (projected, below) and v the
teacher's:

    cosine   1 − u·v / (‖u‖ ‖v‖)                   (DistilBERT's cosine embedding loss, §3)
    l2       (1 / D_teacher) Σ_d (u_d − v_d)²      (the MSE of FitNets / TinyBERT)

then the masked mean over positions and the mean over pairs, in fp32; the objective adds
`distill.feature_weight` times it. When the widths differ, u = h_student · W with one learned
W [D_student, D_teacher] per pair (FitNets' regressor, TinyBERT's W_h), trained with the student
by the same optimizer. W lives in `FeatureStudent.feature_proj`, a training-only parameter:
checkpoints keep it in their `extra` item (train/checkpoint.py), so the student's `state` item,
and everything that eval / generate / quantize / export read, is the plain Transformer's.
"""
# ruff: noqa: F722  (jaxtyping shape strings are not forward references)

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from compactlm.models.config import ModelConfig
from compactlm.models.dense import param_init
from compactlm.models.transformer import Transformer

FEATURES = ("none", "cosine", "l2")
# Floor of ‖u‖·‖v‖ in the cosine: an all-zero state (never in practice) scores 1, not 0/0.
COSINE_EPS = 1e-8


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """ "s:t,s:t" → ((s, t), ...); "" → () (the default pairing). Syntax only: ValueError."""
    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        parts = item.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"distill.feature_layers item {item!r}: write STUDENT:TEACHER hidden-state "
                "indices, e.g. 2:4,4:8 (0 = embeddings, l = output of block l)"
            )
        pairs.append((int(parts[0]), int(parts[1])))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"distill.feature_layers={text!r} repeats a pair")
    return tuple(pairs)


def feature_pairs(text: str, n_student: int, n_teacher: int) -> tuple[tuple[int, int], ...]:
    """The (student, teacher) hidden-state pairs, checked against both depths."""
    pairs = parse_pairs(text) or tuple(
        (layer, layer * n_teacher // n_student) for layer in range(1, n_student + 1)
    )
    for s, t in pairs:
        if s > n_student or t > n_teacher:
            raise ValueError(
                f"distill.feature_layers pair {s}:{t} is out of range: the student has hidden "
                f"states 0…{n_student}, the teacher 0…{n_teacher} (0 = embeddings, l = block l)"
            )
    return pairs


class FeatureStudent(Transformer):
    """A Transformer plus one learned projection [D_student, D_teacher] per feature pair.

    Its forward pass is the Transformer's; `feature_proj` ([P, D_s, D_t]) is training-only
    state (`checkpoint_extra`: kept apart in checkpoints, never exported).
    """

    checkpoint_extra = "feature_proj"

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, n_pairs: int, teacher_width: int):
        super().__init__(cfg, rngs=rngs)
        # std 1/√D_s: a random projection that keeps the residual stream's scale (FitNets
        # initialise their regressor at random too; cosine is scale-free anyway).
        init = param_init(cfg.d_model**-0.5, (None, None, None))
        shape = (n_pairs, cfg.d_model, teacher_width)
        self.feature_proj = nnx.Param(init(rngs.params(), shape, jnp.dtype(cfg.param_dtype)))


def make_student_fn(student: ModelConfig, teacher: ModelConfig, n_pairs: int):
    """The trainer's model_fn: FeatureStudent when widths differ, else None (plain Transformer)."""
    if student.d_model == teacher.d_model:
        return None

    def model_fn(cfg: ModelConfig, *, rngs: nnx.Rngs) -> FeatureStudent:
        return FeatureStudent(cfg, rngs=rngs, n_pairs=n_pairs, teacher_width=teacher.d_model)

    return model_fn


def feature_loss(
    student_PBTD: Float[Array, "P B T Ds"],
    teacher_PBTE: Float[Array, "P B T Dt"],
    kind: str,
    mask_BT: Float[Array, "B T"],
    proj_PDE: Float[Array, "P Ds Dt"] | None = None,
) -> Float[Array, ""]:
    """Mean over pairs of the masked per-position mean of `kind` (module docstring)."""
    u = student_PBTD.astype(jnp.float32)
    v = jax.lax.stop_gradient(teacher_PBTE.astype(jnp.float32))
    if proj_PDE is not None:
        u = jnp.einsum("pbtd,pde->pbte", u, proj_PDE.astype(jnp.float32))
    if u.shape != v.shape:
        raise ValueError(f"feature widths differ without a projection: {u.shape} vs {v.shape}")
    if kind == "cosine":
        norms = jnp.maximum(jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1), COSINE_EPS)
        per_PBT = 1.0 - jnp.sum(u * v, axis=-1) / norms
    elif kind == "l2":
        per_PBT = jnp.mean(jnp.square(u - v), axis=-1)
    else:
        raise ValueError(f"unknown distill.features {kind!r}; valid: {', '.join(FEATURES)}")
    mask = mask_BT.astype(jnp.float32)
    per_P = jnp.sum(per_PBT * mask, axis=(1, 2)) / jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.mean(per_P)
