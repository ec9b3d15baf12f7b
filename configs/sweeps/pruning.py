"""Pruning at 50 %: unstructured vs 4:8 vs 2:4 for magnitude / Wanda / SparseGPT (Wanda Table 3).

Every row prunes the block linears of the shared `tiny` base, no recovery training, and scores
the first 64k validation tokens before and after. Paper numbers: LLaMA-7B WikiText-2 perplexity
(dense 5.68) from Wanda (Sun et al. 2024), Table 3.
"""

from compactlm.experiments.sweep import Row, Sweep

# Wanda Table 3, LLaMA-7B, WikiText-2 perplexity at 50 % sparsity (dense 5.68).
_PAPER = {
    ("magnitude", "unstructured"): 17.29,
    ("magnitude", "4:8"): 16.84,
    ("magnitude", "2:4"): 42.13,
    ("sparsegpt", "unstructured"): 7.22,
    ("sparsegpt", "4:8"): 8.61,
    ("sparsegpt", "2:4"): 11.00,
    ("wanda", "unstructured"): 7.26,
    ("wanda", "4:8"): 8.57,
    ("wanda", "2:4"): 11.53,
}

SWEEP = Sweep(
    title="50% sparsity: pattern x method (Wanda Table 3 shape)",
    command="prune",
    target="{base}",
    base="tiny",
    common=("sparsity=0.5", "eval_tokens=65536", "calib.sequences=128"),
    rows=tuple(
        Row(
            name=f"{method}-{pattern.replace(':', 'of')}",
            overrides=(f"method={method}", f"pattern={pattern}"),
            paper={"llama7b_ppl": ppl},
        )
        for (method, pattern), ppl in _PAPER.items()
    ),
    seed_key=None,
    metrics=("bpb", "before/bpb"),
    paper_labels={"llama7b_ppl": "LLaMA-7B WikiText-2 perplexity (per token; dense 5.68)"},
    paper_note=(
        "Wanda ≈ SparseGPT ≫ magnitude at every pattern; unstructured < 4:8 < 2:4 in perplexity "
        "(more structure costs more), magnitude 2:4 collapses (42.13 vs dense 5.68)."
    ),
)
