"""QLoRA: 4-bit data types of the frozen base, double quantization, vs 16-bit LoRA, and
all-linear vs attention-only adapters (QLoRA, Dettmers et al. 2023, Tables 2-4 and Fig. 2).

Every row fine-tunes the shared `tiny` base (600 steps on pystdlib) for 150 steps on the Python
documentation (a domain shift), rank 4, alpha 16, same schedule and seeds; only the storage of
the frozen block linears and the adapted projections differ. 4-bit bases are quantized at load
time in blocks of 64 (QLoRA's block); `model.double_quant` (default on for nf4 / fp4) stores the
absmax constants again in 8 bit, blocks of 256 (4.127 instead of 4.5 bits per parameter;
int4 has no double quantization). On a CPU the 4-bit matmuls run the jnp reference (dequantize,
then dot). The zero-shot quality of each 4-bit type without fine-tuning (the paper's Table 2
proper) is `configs/sweeps/quant_formats.py`.
"""

from compactlm.experiments.sweep import Row, Sweep

LORA = ("adapter.kind=lora", "adapter.rank=4", "adapter.alpha=16")
ALL = "adapter.targets=all-linear"
ATTN = "adapter.targets=q,k,v,o"

SWEEP = Sweep(
    title="QLoRA: NF4 / FP4 / int4 bases, double quantization, vs 16-bit LoRA (QLoRA Tables 2-4, "
    "Fig. 2)",
    command="finetune",
    target="{base}",
    base="tiny",
    common=(
        "data.corpus=pydocs",
        "train.steps=150",
        "train.eval_every=0",
        "train.checkpoint_every=150",
        "train.progress=false",
        "train.tensorboard=false",
        "optim.warmup_steps=15",
    ),
    rows=(
        Row(name="full-16bit", overrides=("adapter.kind=none", "optim.lr=1e-3")),
        Row(name="lora-16bit-all", overrides=(*LORA, ALL)),
        Row(name="lora-16bit-attn", overrides=(*LORA, ATTN)),
        Row(name="nf4-dq-all", overrides=(*LORA, ALL, "model.weight_format=nf4")),
        Row(
            name="nf4-all",
            overrides=(*LORA, ALL, "model.weight_format=nf4", "model.double_quant=false"),
        ),
        Row(name="fp4-dq-all", overrides=(*LORA, ALL, "model.weight_format=fp4")),
        Row(
            name="fp4-all",
            overrides=(*LORA, ALL, "model.weight_format=fp4", "model.double_quant=false"),
        ),
        Row(name="int4-all", overrides=(*LORA, ALL, "model.weight_format=int4")),
        Row(name="nf4-dq-attn", overrides=(*LORA, ATTN, "model.weight_format=nf4")),
    ),
    seeds=2,
    metrics=("loss", "bpb", "trainable_params", "checkpoint_bytes"),
    paper_note=(
        "NF4 with double quantization matches 16-bit LoRA after fine-tuning (Tables 3-4: e.g. "
        "LLaMA MMLU 5-shot, NF4+DQ = BF16 within noise; FP4 about a point lower); double "
        "quantization saves ~0.37 bits/param without a loss change (§3, Table 4); LoRA on every "
        "linear layer is needed to match full 16-bit fine-tuning, attention-only LoRA falls short "
        "(Fig. 2, LLaMA-7B on Alpaca)."
    ),
)
