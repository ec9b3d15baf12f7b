"""When does distillation pay? Teacher strength x data fraction x divergence, 3 seeds (issue 22).

Teacher strength is its training steps: `tiny` (828,544 parameters) trained for 100 steps (weak)
or 400 (strong), each its own cosine schedule, on all of pystdlib. Data fraction: the student
reads the first 1 % of the training tokens (~105K; 100 steps x 2,048 tokens read them ~2 times,
the low-data regime of Hinton et al.) or all of them (one pass over 205K tokens). Rows per
(teacher, fraction): `hard` (alpha = 0: hard labels only), `fkl_t1` (forward KL, T = 1,
alpha = 1: pure KD), `fkl_t2` (forward KL at Hinton's T = 2, alpha = 1) and `skl` (DistiLLM's
skew KL, skew 0.1, T = 1, alpha = 1); a fresh nano student (217,664 parameters) for 100 steps.

Each (teacher, fraction) is paid once: its rows read one stored cache of the teacher's top-64
logits over the students' windows (`compactlm distill CACHE nano ...`; 100 steps x seeds 0-2,
temperatures 1 and 2). The sweep runner does not build teachers or caches: first run the command
lines `python configs/sweeps/distill_strength.py` prints (two teachers, four caches; tiny400's
full-data cache is the one `distill_cached` reads). Paths are relative to the working directory.

Hinton et al. (2015, Table 3) found soft targets most valuable with little data (3 % of the
speech data: 57.0 % vs 44.5 % frame accuracy on hard targets). The issue's own earlier trial had
KD lose: a 400-step nano teacher into a d = 32 student on 200 kB, 200 steps: fkl T = 2 3.089 and
skl 3.136 nats vs 3.019 on hard labels.
"""

from compactlm.experiments.sweep import Row, Sweep

STEPS = 100
TEACHERS = {  # name -> (run directory, the command that trains it)
    f"t{n}": (
        f"runs/sweeps/_teachers/tiny{n}",
        ("train", "tiny", f"train.steps={n}", "train.seed=0", "train.eval_every=0"),
    )
    for n in (100, 400)
}
FRACTIONS = {"f1": 0.01, "full": 1.0}  # name -> data.train_fraction
DIVERGENCES = {
    "hard": ("distill.alpha=0.0",),
    "fkl_t1": ("distill.loss=fkl", "distill.temperature=1.0", "distill.alpha=1.0"),
    "fkl_t2": ("distill.loss=fkl", "distill.temperature=2.0", "distill.alpha=1.0"),
    "skl": ("distill.loss=skl", "distill.skew=0.1", "distill.temperature=1.0", "distill.alpha=1.0"),
}


def cache_dir(teacher: str, fraction: str) -> str:
    # tiny400 on all the data: the very cache of configs/sweeps/distill_cached.py.
    return f"runs/sweeps/_cache/tiny{teacher[1:]}_{fraction}"


def _fraction(frac: float) -> tuple[str, ...]:
    # All the data is the default: tiny400's full cache then has distill_cached's command line.
    return (f"data.train_fraction={frac}",) if frac < 1.0 else ()


# The commands that make the teachers and caches (argv after `compactlm`), in order.
PREPARE = (
    *((*argv, f"workdir={run_dir}") for run_dir, argv in TEACHERS.values()),
    *(
        (
            "distill-cache",
            run_dir,
            *_fraction(frac),
            "top_k=64",
            f"steps={STEPS}",
            "seeds=0,1,2",
            "temperatures=1,2",
            f"workdir={cache_dir(t, f)}",
        )
        for t, (run_dir, _) in TEACHERS.items()
        for f, frac in FRACTIONS.items()
    ),
)

SWEEP = Sweep(
    title="when KD beats hard labels: teacher steps x data fraction x divergence (Hinton 2015)",
    command="distill",
    target=(cache_dir("t400", "full"), "nano"),  # every row names its own cache below
    common=(
        f"train.steps={STEPS}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=tuple(
        Row(
            name=f"{t}_{f}_{d}",
            target=(cache_dir(t, f), "nano"),
            overrides=(f"data.train_fraction={frac}", *overrides),
        )
        for t in TEACHERS
        for f, frac in FRACTIONS.items()
        for d, overrides in DIVERGENCES.items()
    ),
    seeds=3,
    metrics=("student/bpb", "student/loss"),
    paper_note=(
        "Hinton et al. 2015, Table 3: with 3 % of the data, soft targets 57.0 % vs hard targets "
        "44.5 % frame accuracy. Issue 22's trial (400-step nano teacher, 200 kB): fkl T=2 3.089, "
        "skl 3.136 vs hard 3.019 nats."
    ),
)

if __name__ == "__main__":
    import shlex

    for argv in PREPARE:
        print(shlex.join(["compactlm", *argv]))
