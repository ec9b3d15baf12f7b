"""Transfer learning: tiny pretrained on pystdlib, adapted to pydocs (docs/adapters.md).

Every row fine-tunes the shared `tiny` fixture (600 steps on pystdlib) for the same 150 steps,
schedule and seed on the Python reference documentation, and reports the validation loss on
pydocs beside the base's (`base/loss`), the trainable parameters, the adapter checkpoint bytes,
tokens/s and peak RSS. QLoRA rows quantize the frozen base to NF4 / FP4 / int4 (blocks of 64,
double quantization for NF4 / FP4) at load time; on a CPU the 4-bit matmuls run the jnp
reference (dequantize, then dot), so their tokens/s is not the GPU kernels'.
"""

from compactlm.experiments.sweep import Row, Sweep

LORA = ("adapter.kind=lora",)
ALL = "adapter.targets=all-linear"

SWEEP = Sweep(
    title="adapters on a transfer task: tiny pystdlib → pydocs (LoRA / DoRA / PiSSA / QLoRA)",
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
        Row(name="full", overrides=("adapter.kind=none", "optim.lr=1e-3")),
        Row(name="lora_qv_r8", overrides=(*LORA, "adapter.targets=q,v", "adapter.rank=8")),
        Row(name="lora_all_r4", overrides=(*LORA, ALL, "adapter.rank=4")),
        Row(name="dora_all_r4", overrides=("adapter.kind=dora", ALL, "adapter.rank=4")),
        Row(name="pissa_all_r4", overrides=(*LORA, ALL, "adapter.rank=4", "adapter.init=pissa")),
        Row(name="qlora_nf4", overrides=(*LORA, ALL, "adapter.rank=4", "model.weight_format=nf4")),
        Row(name="qlora_fp4", overrides=(*LORA, ALL, "adapter.rank=4", "model.weight_format=fp4")),
        Row(
            name="qlora_int4", overrides=(*LORA, ALL, "adapter.rank=4", "model.weight_format=int4")
        ),
    ),
    seeds=1,
    metrics=("loss", "bpb", "base/loss", "trainable_params", "checkpoint_bytes", "tokens_per_s"),
    paper_note=(
        "QLoRA (Dettmers et al. 2023, Table 2 / Fig. 2): NF4 with double quantization matches "
        "16-bit LoRA and beats FP4 and int4 bases; adapters on all linear layers are needed to "
        "match full fine-tuning, attention-only LoRA falls short."
    ),
)
