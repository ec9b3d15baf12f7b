"""Distillation divergences: fkl, rkl, jsd, skl, srkl, tvd into a nano student (DistiLLM / GKD).

The shared `tiny` base is the teacher; every row distills a fresh `nano` student for the same
steps with a different divergence (alpha = 1: pure distillation, T = 1) and reports the
student's validation bits per byte. DistiLLM (Ko et al. 2024) reports skew KL / skew reverse KL
above KL and reverse KL on instruction following; GKD (Agarwal et al. 2024) finds no divergence
best everywhere. Our task is plain next-byte prediction on pystdlib, where forward KL is the
maximum-likelihood-matching choice.
"""

from compactlm.eval.sweep import Row, Sweep

SWEEP = Sweep(
    title="divergence choice at equal steps (DistiLLM Table / GKD Fig. shape)",
    command="distill",
    target=("{base}", "nano"),
    base="tiny",
    common=(
        "distill.alpha=1.0",
        "distill.temperature=1.0",
        "train.steps=300",
        "train.eval_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=tuple(
        Row(name=loss, overrides=(f"distill.loss={loss}",))
        for loss in ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
    ),
    seeds=1,
    metrics=("student/bpb", "student/loss", "teacher/bpb"),
    paper_note=(
        "DistiLLM: SKL and SRKL (skew 0.1) beat KL and RKL; GKD: the best divergence is task "
        "dependent, on-policy data helps more than the divergence."
    ),
)
