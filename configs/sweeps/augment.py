"""Data augmentation in the data-limited regime: nano on 96 KB of pydocs for ~17 epochs.

Augmentation is meant for small data (EDA, Wei & Zou 2019; NEFTune, Jain et al. 2023), so the
budget repeats the data: 800 steps x 16 x 128 byte tokens = 1.6M tokens over ~96k training tokens
(pydocs capped at 120 KB, 20% of it held out as validation documents). Every row has the same
steps, schedule and seed as `none`; only the augmentation differs. Validation is never augmented.
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="validation loss with and without augmentation, data-limited nano (EDA / NEFTune)",
    command="train",
    target="nano",
    common=(
        "data.corpus=pydocs",
        "data.max_corpus_bytes=120000",
        "data.val_fraction=0.2",
        "train.steps=800",
        "train.eval_every=0",
        "train.checkpoint_every=400",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="none"),
        Row(name="dropout0.1", overrides=("data.augment=dropout", "data.augment_rate=0.1")),
        Row(name="swap0.1", overrides=("data.augment=swap", "data.augment_rate=0.1")),
        Row(name="insert0.1", overrides=("data.augment=insert", "data.augment_rate=0.1")),
        Row(name="span_mask0.15", overrides=("model.span_mask_rate=0.15",)),
        Row(name="neftune5", overrides=("model.neftune_alpha=5",)),
        # Milder settings: at 0.1 every augmentation above raised the validation loss.
        Row(name="dropout0.02", overrides=("data.augment=dropout", "data.augment_rate=0.02")),
        Row(name="swap0.02", overrides=("data.augment=swap", "data.augment_rate=0.02")),
        Row(name="insert0.02", overrides=("data.augment=insert", "data.augment_rate=0.02")),
        Row(name="span_mask0.05", overrides=("model.span_mask_rate=0.05",)),
        Row(name="neftune1", overrides=("model.neftune_alpha=1",)),
    ),
    seeds=1,
    metrics=("loss", "bpb"),
    paper_note=(
        "EDA (Wei & Zou 2019) gains most on small training sets (their Fig. 1: ~3% accuracy "
        "at 500 examples, <1% on the full sets); NEFTune (Jain et al. 2023) reports better "
        "instruction-following, not lower validation loss (its training loss is higher)."
    ),
)
