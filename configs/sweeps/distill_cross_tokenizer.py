"""Cross-tokenizer distillation: byte student <- BPE-4096 teacher, and the reverse (issue 22).

Two nano teachers trained for 300 steps on `pydocs`, one per tokenizer: BPE with 4,096 ids and
byte-level. Each student is a fresh nano on the other tokenizer, 200 steps, and every row runs the
teacher in its step with `distill.cross_tokenizer=...` (the two tokenizations are aligned by byte
offsets; compactlm/train/distill_uld.py). `*_hard` rows are the same command at alpha = 0 (the
teacher runs, its term has weight 0: the gradient of `compactlm train`), so every row of a
direction sees the same batches; `*_uld` is ULD (Boizard et al. 2024) mixed with CE at
alpha = 0.6 (the paper's lambda = 1.5), T = 1. docs/distillation.md (5) has the seed-0 byte rows.

The teachers are not sweep fixtures: train them first with the command lines
`python configs/sweeps/distill_cross_tokenizer.py` prints (paths relative to the working
directory). Paper claims: ULD (Boizard et al. 2024, Tables 1-3) improves every student over CE
alone on QA and summarization across families by a few points; GOLD (TRL's GOLDTrainer) merges
the probabilities inside byte-aligned groups and compares the tokens both vocabularies share
directly; `*_gold` rows (compactlm/train/distill_gold.py, docs/distillation.md (5)).
"""

from compactlm.experiments.sweep import Row, Sweep

TEACHERS = {  # student's tokenizer -> (teacher run directory, the command that trains it)
    "byte": (
        "runs/sweeps/_teachers/nano_bpe4096_pydocs",
        ("train", "nano", "data.tokenizer=bpe", "data.corpus=pydocs", "train.steps=300",
         "train.seed=0", "train.eval_every=0"),
    ),
    "bpe": (
        "runs/sweeps/_teachers/nano_byte_pydocs",
        ("train", "nano", "data.tokenizer=byte", "data.corpus=pydocs", "train.steps=300",
         "train.seed=0", "train.eval_every=0"),
    ),
}  # fmt: skip
PREPARE = tuple((*argv, f"workdir={run_dir}") for run_dir, argv in TEACHERS.values())
GOLD = ("distill.cross_tokenizer=gold", "distill.loss=jsd", "distill.beta=0.5", "distill.alpha=0.6")
NAMES = {"byte": "byte_from_bpe", "bpe": "bpe_from_byte"}  # row-name prefix per direction


def _rows(student: str) -> tuple[Row, ...]:
    target = (TEACHERS[student][0], "nano")
    tok = (f"data.tokenizer={student}",)
    name = NAMES[student]
    return (
        Row(name=f"{name}_hard", target=target, overrides=(*tok, "distill.alpha=0.0")),
        Row(name=f"{name}_uld", target=target, overrides=(*tok, "distill.alpha=0.6")),
        # GOLD (compactlm/train/distill_gold.py): TRL's jsd (beta 0.5) on the shared tokens, ULD on
        # the rest, adaptive weights; mixed with CE at alpha = 0.6 like the ULD row
        Row(name=f"{name}_gold", target=target, overrides=(*tok, *GOLD)),
    )


SWEEP = Sweep(
    title="cross-tokenizer distillation vs hard labels at equal steps (ULD, GOLD)",
    command="distill",
    target=(TEACHERS["byte"][0], "nano"),  # every row names its own teacher
    common=(
        "data.corpus=pydocs",
        "distill.cross_tokenizer=uld",
        "distill.temperature=1.0",
        "train.steps=200",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(*_rows("byte"), *_rows("bpe")),
    seeds=3,
    metrics=("student/bpb", "student/loss"),
    paper_note=(
        "ULD (Boizard et al. 2024, Tables 1-3): CE + ULD beats CE alone on QA and summarization "
        "for every teacher/student pair, by a few points of task score."
    ),
)

if __name__ == "__main__":
    import shlex

    for argv in PREPARE:
        print(shlex.join(["compactlm", *argv]))
