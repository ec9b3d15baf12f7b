"""Distillation divergences fkl, rkl, jsd, skl, srkl, tvd (+ top-k, features) into nano (DistiLLM).

The shared `tiny1200` base (tiny's full 1200-step schedule, better than gzip -9) is the teacher;
every row distills a fresh `nano` student for the same 300 steps with a different divergence
(alpha = 1: pure distillation, T = 1, off-policy) and reports the student's validation bits per
byte, its CE, and the teacher's NLL of the student's samples (low = the student writes what the
teacher finds likely). `hard` is the same student on hard labels (alpha = 0: the teacher runs but
its term has weight 0). DistiLLM (Ko et al. 2024) reports skew KL / skew reverse KL above KL and
reverse KL on instruction following; GKD (Agarwal et al. 2024) finds no divergence best
everywhere. Our task is plain next-byte prediction on pystdlib, where forward KL is the
maximum-likelihood-matching choice.
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="divergence choice at equal steps (DistiLLM Table / GKD Fig. shape)",
    command="distill",
    target=("{base}", "nano"),
    base="tiny1200",
    common=(
        "distill.alpha=1.0",
        "distill.temperature=1.0",
        "train.steps=300",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="hard", overrides=("distill.alpha=0.0",)),
        *(
            Row(name=loss, overrides=(f"distill.loss={loss}",))
            for loss in ("fkl", "rkl", "jsd", "skl", "srkl", "tvd")
        ),
        Row(name="fkl_top8", overrides=("distill.loss=fkl", "distill.top_k=8")),
        Row(name="fkl_cosine", overrides=("distill.loss=fkl", "distill.features=cosine")),
    ),
    seeds=2,
    metrics=("student/bpb", "student/loss", "student/sample_teacher_nll", "teacher/bpb"),
    paper_note=(
        "DistiLLM: SKL and SRKL (skew 0.1) beat KL and RKL; GKD: the best divergence is task "
        "dependent, on-policy data helps more than the divergence."
    ),
)
