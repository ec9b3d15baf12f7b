"""Student initialisation from the teacher (DistilBERT, Sanh et al. 2019 §3: one layer out of two).

The student takes the teacher's embedding, final norm and (untied) output head, and block i of
the student takes teacher block `i · L_teacher // L_student` (0, 2, 4, … when the student has
half the layers). That needs every per-layer shape to agree: same d_model, heads, kv heads, head
dim, d_ff, vocabulary and tied/untied head; only the depth may differ (student ≤ teacher). Works
for stacked (`scan_layers`) and unrolled layouts on either side; parameter paths are matched by
name, so any parameter the two models do not share is an error, not a silent skip.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from compactlm.models.config import ModelConfig

# Fields that fix the shape of one block, the embedding or the head.
SHAPE_FIELDS = (
    "vocab_size",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "resolved_head_dim",
    "d_ff",
    "tie_embeddings",
)


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher block index for each student block (evenly spaced from the bottom, block 0 first)."""
    return [i * n_teacher // n_student for i in range(n_student)]


def check_compatible(student: ModelConfig, teacher: ModelConfig) -> None:
    bad = [
        f"{name} {getattr(student, name)} vs teacher {getattr(teacher, name)}"
        for name in SHAPE_FIELDS
        if getattr(student, name) != getattr(teacher, name)
    ]
    if student.n_layers > teacher.n_layers:
        bad.append(f"n_layers {student.n_layers} > teacher {teacher.n_layers}")
    if bad:
        raise ValueError(
            "distill.init_from_teacher needs the teacher's per-layer shapes; student "
            + ", ".join(bad)
        )


def _split_layer(path: tuple, scanned: bool) -> tuple[int | None, tuple]:
    """(layer index or None for stacked / non-layer params, the path without the index)."""
    if path[0] != "layers":
        return None, path
    if scanned:
        return None, path
    return int(path[1]), (path[0], *path[2:])


def init_from_teacher(
    student_params: nnx.State,
    teacher_params: nnx.State,
    student_cfg: ModelConfig,
    teacher_cfg: ModelConfig,
) -> nnx.State:
    """student_params with every value taken from the teacher (module docstring); dtypes and
    the student's layout (stacked or unrolled) are kept."""
    check_compatible(student_cfg, teacher_cfg)
    mapping = layer_map(student_cfg.n_layers, teacher_cfg.n_layers)
    # path without the layer index -> the teacher's arrays, one per block (or [value] outside
    # the blocks)
    teacher: dict[tuple, list] = {}
    unrolled: dict[tuple, dict[int, object]] = {}
    for path, var in nnx.to_flat_state(teacher_params):
        value = var.get_value()
        if path[0] == "layers" and not teacher_cfg.scan_layers:
            index, key = _split_layer(path, False)
            unrolled.setdefault(key, {})[index] = value
        else:
            teacher[path] = list(value) if path[0] == "layers" else [value]
    for key, by_index in unrolled.items():
        teacher[key] = [by_index[i] for i in sorted(by_index)]

    out = []
    for path, var in nnx.to_flat_state(student_params):
        index, key = _split_layer(path, student_cfg.scan_layers)
        if key not in teacher:
            raise ValueError(f"distill.init_from_teacher: the teacher has no parameter {key}")
        old = var.get_value()
        if path[0] != "layers":
            new = teacher[key][0]
        elif student_cfg.scan_layers:
            new = jnp.stack([teacher[key][j] for j in mapping])
        else:
            new = teacher[key][mapping[index]]
        if new.shape != old.shape:
            raise ValueError(
                f"distill.init_from_teacher: {'/'.join(map(str, path))} has shape {old.shape} "
                f"in the student, {new.shape} from the teacher"
            )
        out.append((path, var.replace(new.astype(old.dtype))))
    return nnx.from_flat_state(out)
