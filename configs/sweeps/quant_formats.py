"""4-bit data types without fine-tuning: NF4 vs FP4 vs int4 (QLoRA, Dettmers et al. 2023, Table 2).

QLoRA's Table 2 quantizes pretrained bases to each 4-bit type (blocks of 64, round to nearest)
and scores them zero-shot. Here: the shared `tiny` base's block linears rounded to NF4, FP4 (E2M1)
and symmetric int4, blocks of 64 along K, scored on the first 64k pystdlib validation tokens
before (dense) and after. Deterministic: one run per row. `-dq` rows store the NF4 / FP4 absmax
constants double-quantized (8 bit, blocks of 256: QLoRA §3); the others keep them in f32. The
same data types under fine-tuning: `configs/sweeps/qlora.py`.
"""

from compactlm.experiments.sweep import Row, Sweep

# QLoRA Table 2: mean Pile Common Crawl perplexity over OPT / BLOOM / LLaMA / Pythia 125M-13B
# (int4, Float4 E2M1, NFloat4 + double quantization).
_PAPER = {"int4": 34.34, "fp4": 31.07, "nf4-dq": 27.41}


def _row(fmt: str, dq: bool) -> Row:
    name = f"{fmt}-dq" if dq else fmt
    paper = {"pile_cc_ppl": _PAPER[name]} if name in _PAPER else {}
    overrides = (f"format={fmt}",) + (("double_quant=true",) if dq else ())
    return Row(name=f"rtn-{name}-g64", overrides=overrides, paper=paper)


SWEEP = Sweep(
    title="4-bit data types zero-shot: NF4 vs FP4 vs int4, blocks of 64 (QLoRA Table 2 shape)",
    command="quantize",
    target="{base}",
    base="tiny",
    common=("method=rtn", "group_size=64", "eval_tokens=65536"),
    rows=(
        _row("int4", False),
        _row("fp4", False),
        _row("nf4", False),
        _row("fp4", True),
        _row("nf4", True),
    ),
    seed_key=None,
    metrics=("bpb", "before/bpb"),
    paper_labels={"pile_cc_ppl": "Pile-CC perplexity, mean over 125M-13B models (per token)"},
    paper_note=(
        "Mean perplexity after round-to-nearest 4-bit quantization: int4 34.34 > FP4 (E2M1) "
        "31.07 > NF4 + DQ 27.41; NF4's quantiles of a normal fit the weight distribution better "
        "than a uniform grid or a float grid."
    ),
)
