"""Example: lm-eval accuracy beside bits per byte (docs/evaluation.md, "Sweeps with an lm-eval
target").

Three nano widths trained on the same budget; after each row's run, `compactlm eval RUN
tasks=arc_easy num_fewshot=0` scores it, and the table shows acc and acc_norm next to bpb.
arc_easy's data comes from the Hugging Face Hub on first use (network needed); a local task works
the same with `include_path=DIR` in lm_eval. A nano model is far too small to beat ARC-Easy's
chance level (~25 %): this file shows the mechanism, not a result.
"""

from compactlm.experiments.sweep import Row, Sweep

SWEEP = Sweep(
    title="nano widths: bits per byte and ARC-Easy accuracy (lm-eval)",
    command="train",
    target="nano",
    common=(
        "train.steps=300",
        "train.eval_every=0",
        "train.progress=false",
        "train.tensorboard=false",
    ),
    rows=(
        Row(name="d32", overrides=("model.d_model=32", "model.d_ff=96"), x=32),
        Row(name="d64", x=64),  # nano's own width
        Row(name="d128", overrides=("model.d_model=128", "model.d_ff=384"), x=128),
    ),
    metrics=("bpb", "lm-eval:arc_easy/acc", "lm-eval:arc_easy/acc_norm"),
    # Options of `compactlm eval` besides tasks= (lm_eval_run.LmEvalConfig).
    lm_eval=("num_fewshot=0", "batch_size=16"),
    x_label="d_model",
)
