"""Hinton's low-data result: 3 % of the training tokens, several epochs, distilled vs hard labels.

Hinton et al. 2015 §3 (speech): a model trained on 3 % of the data over-fits on hard labels
(44.5 % test accuracy) while the same model trained on the full model's soft targets keeps
57.0 % (the full-data baseline: 58.9 %). Here: `data.train_fraction=0.03` keeps the first 3 %
of pystdlib's training tokens (~315K) and the full validation split; 400 steps x 2,048 tokens
read them ~2.6 times. The teacher is the shared `tiny1200` base (trained on all of the data);
the students are nano. `hard` trains on hard labels only (alpha = 0), `kd_t2` uses Hinton's
mix (T = 2, alpha = 0.5), `kd_t1` pure distillation at T = 1.
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="3 % of the data: distilled vs hard labels (Hinton et al. 2015, Table 3 shape)",
    command="distill",
    target=("{base}", "nano"),
    base="tiny1200",
    common=(
        "data.train_fraction=0.03",
        "train.steps=400",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="hard", overrides=("distill.alpha=0.0",)),
        Row(name="kd_t2", overrides=("distill.temperature=2.0", "distill.alpha=0.5")),
        Row(name="kd_t1", overrides=("distill.temperature=1.0", "distill.alpha=1.0")),
    ),
    seeds=3,
    metrics=("student/bpb", "student/loss", "student/sample_teacher_nll", "teacher/bpb"),
    paper_note=(
        "Hinton et al. 2015, Table 3: 3 % of the data, hard targets 44.5 % test frame accuracy "
        "(over-fits), soft targets 57.0 %, full data 58.9 %."
    ),
)
