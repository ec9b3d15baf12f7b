"""Divergences from one stored cache of the teacher's logits: the teacher is paid once (issue 22).

Every row reads the same `compactlm distill-cache` of a `tiny` teacher trained for 400 steps
(top 64 + tail bucket, temperatures 1 and 2, 100 steps of seeds 0-2 of the nano student's batch
stream) instead of running the teacher in each step: `compactlm distill CACHE nano ...`. Rows:
hard labels (alpha = 0) and fkl, rkl, jsd (beta 0.5), skl (skew 0.1), each a fresh nano student
for 100 steps at alpha = 1, T = 1 (pure distillation, off-policy), as in `distill_divergences`
but from stored top-64 logits (exact: tests/train/test_distill_cache.py). The sweep runner does
not build teachers or caches: first run the two command lines that
`python configs/sweeps/distill_cached.py` prints,

    compactlm train tiny train.steps=400 train.seed=0 train.eval_every=0 \
        workdir=runs/sweeps/_teachers/tiny400
    compactlm distill-cache runs/sweeps/_teachers/tiny400 top_k=64 steps=100 seeds=0,1,2 \
        temperatures=1,2 workdir=runs/sweeps/_cache/tiny400_full

(paths relative to the working directory, not to the sweep's root=). `distill_strength` reads the
same cache for its (tiny400, all data) rows.
"""

from compactlm.experiments.sweep import Row, Sweep

TEACHER = "runs/sweeps/_teachers/tiny400"
CACHE = "runs/sweeps/_cache/tiny400_full"
STEPS = 100
# The commands that make the cache (argv after `compactlm`): the teacher fixture, then one pass.
PREPARE = (
    (
        "train",
        "tiny",
        "train.steps=400",
        "train.seed=0",
        "train.eval_every=0",
        f"workdir={TEACHER}",
    ),
    (
        "distill-cache",
        TEACHER,
        "top_k=64",
        f"steps={STEPS}",
        "seeds=0,1,2",
        "temperatures=1,2",
        f"workdir={CACHE}",
    ),
)

SWEEP = Sweep(
    title="divergence choice from one stored teacher cache (top 64, 100 steps)",
    command="distill",
    target=(CACHE, "nano"),
    common=(
        "distill.alpha=1.0",
        "distill.temperature=1.0",
        f"train.steps={STEPS}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="hard", overrides=("distill.alpha=0.0",)),
        Row(name="fkl", overrides=("distill.loss=fkl",)),
        Row(name="rkl", overrides=("distill.loss=rkl",)),
        Row(name="jsd", overrides=("distill.loss=jsd", "distill.beta=0.5")),
        Row(name="skl", overrides=("distill.loss=skl", "distill.skew=0.1")),
    ),
    seeds=3,
    # No teacher/* or sample_teacher_nll: a cached run never loads the teacher's model.
    metrics=("student/bpb", "student/loss"),
    paper_note=(
        "DistiLLM: SKL (skew 0.1) beats KL and RKL; GKD: the best divergence is task dependent. "
        "Here, in the online table (docs/distillation.md (2)), forward KL beat the others."
    ),
)

if __name__ == "__main__":
    import shlex

    for argv in PREPARE:
        print(shlex.join(["compactlm", *argv]))
