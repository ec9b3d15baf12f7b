"""Data augmentation on a small-data transfer task: the `tiny` base fine-tuned on 96 KB of pydocs.

The transfer counterpart of `augment` (nano from scratch): the shared `tiny` base (600 steps on
pystdlib) is fully fine-tuned on the Python documentation capped at 120 KB (20 % held out as
validation documents, ~96k training tokens) for 300 steps x 16 x 256 tokens, ~12 passes over the
data, so the run over-fits and a regulariser has something to fix. Every row has the same steps,
schedule and seed as `none`; only the augmentation differs. Validation is never augmented.
NEFTune (Jain et al. 2023) is a fine-tuning method; alpha = 5 is its smallest published setting.
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="augmentation vs none, tiny fine-tuned on 96 KB of pydocs (EDA / NEFTune, transfer)",
    command="finetune",
    target="{base}",
    base="tiny",
    common=(
        "adapter.kind=none",
        "optim.lr=1e-3",
        "optim.warmup_steps=30",
        "data.corpus=pydocs",
        "data.max_corpus_bytes=120000",
        "data.val_fraction=0.2",
        "train.steps=300",
        "train.eval_every=0",
        "train.checkpoint_every=300",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="none"),
        Row(name="dropout0.02", overrides=("data.augment=dropout", "data.augment_rate=0.02")),
        Row(name="dropout0.1", overrides=("data.augment=dropout", "data.augment_rate=0.1")),
        Row(name="swap0.02", overrides=("data.augment=swap", "data.augment_rate=0.02")),
        Row(name="insert0.02", overrides=("data.augment=insert", "data.augment_rate=0.02")),
        Row(name="span_mask0.05", overrides=("model.span_mask_rate=0.05",)),
        Row(name="neftune5", overrides=("model.neftune_alpha=5",)),
    ),
    seeds=1,
    metrics=("loss", "bpb", "base/loss"),
    paper_note=(
        "EDA (Wei & Zou 2019) gains most on small training sets (their Fig. 1: ~3% accuracy "
        "at 500 examples, <1% on the full sets); NEFTune (Jain et al. 2023) improves "
        "instruction-following win rates after fine-tuning while its training loss is higher "
        "(it reports less over-fitting, not lower validation loss)."
    ),
)
