"""On-policy fraction λ (GKD): 0 / 0.5 / 1 of the batches sampled from the student, fkl into nano.

GKD (Agarwal et al. 2024) mixes off-policy batches (data) with on-policy ones (the student's own
continuations of a data prompt, scored by the teacher) and finds on-policy data helps most
(their Fig. 4/5: λ = 1 best on summarisation / translation, λ = 0.5 close). Here the teacher
is the shared `tiny1200` base, the student nano, fkl at T = 1 with alpha = 1 for 300 steps,
prompts of 32 tokens and 96 sampled tokens per 129-token window (`distill.on_policy_prompt=32`).
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="on-policy fraction λ at equal steps (GKD Fig. 4 shape)",
    command="distill",
    target=("{base}", "nano"),
    base="tiny1200",
    common=(
        "distill.loss=fkl",
        "distill.alpha=1.0",
        "distill.temperature=1.0",
        "train.steps=300",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=tuple(
        Row(name=f"lam{lam:g}", overrides=(f"distill.on_policy={lam:g}",), x=lam)
        for lam in (0.0, 0.5, 1.0)
    ),
    seeds=2,
    metrics=("student/bpb", "student/loss", "student/sample_teacher_nll", "teacher/bpb"),
    x_label="on-policy fraction λ",
    paper_note=(
        "GKD: on-policy student samples help more than the choice of divergence; λ = 1 "
        "(fully on-policy) is best or near best on their tasks."
    ),
)
