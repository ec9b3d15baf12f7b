"""4-bit data types without fine-tuning: NF4 vs FP4 vs int4 (QLoRA, Dettmers et al. 2023, Table 2).

QLoRA's Table 2 quantizes pretrained bases to each 4-bit type (blocks of 64, round to nearest)
and scores them zero-shot. Here: the shared `tiny` base's block linears rounded to NF4, FP4 (E2M1)
and symmetric int4, blocks of 64 along K, scored on the first 64k pystdlib validation tokens
before (dense) and after. Deterministic: one run per row. The exported formats carry f32 absmax /
scales (no double quantization); its effect after fine-tuning is `configs/sweeps/qlora.py`.
"""

from compactlm.eval.sweep import Row, Sweep

# QLoRA Table 2: mean Pile Common Crawl perplexity over OPT / BLOOM / LLaMA / Pythia 125M-13B.
_PAPER = {"int4": 34.34, "fp4": 31.07, "nf4": 27.41}  # nf4: NFloat4 + DQ

SWEEP = Sweep(
    title="4-bit data types zero-shot: NF4 vs FP4 vs int4, blocks of 64 (QLoRA Table 2 shape)",
    command="quantize",
    target="{base}",
    base="tiny",
    common=("method=rtn", "group_size=64", "eval_tokens=65536"),
    rows=tuple(
        Row(name=f"rtn-{f}-g64", overrides=(f"format={f}",), paper={"pile_cc_ppl": p})
        for f, p in _PAPER.items()
    ),
    seed_key=None,
    metrics=("bpb", "before/bpb"),
    paper_note=(
        "Mean perplexity after round-to-nearest 4-bit quantization: int4 34.34 > FP4 (E2M1) "
        "31.07 > NF4 + DQ 27.41; NF4's quantiles of a normal fit the weight distribution better "
        "than a uniform grid or a float grid."
    ),
)
