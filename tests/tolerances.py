"""The one table of numerical tolerances used by the tests (docs/architecture.md §7: loosening one
needs a reason).

Keys are (what is compared, dtype); values are (rtol, atol) for np.testing.assert_allclose.
"""

TOL: dict[tuple[str, str], tuple[float, float]] = {
    # f32 paths that should agree to rounding: different summation orders over K <= 1024.
    ("f32_reorder", "float32"): (1e-5, 1e-5),
    # Same f32 formula on both sides (jnp vs NumPy), but XLA turns division by a constant into a
    # multiply by its reciprocal: up to 2 ulps (1 ulp = 1.2e-7 relative).
    ("f32_exact", "float32"): (3e-7, 0.0),
    # NF4 table recomputed from Python's NormalDist in f64 vs QLoRA's table, which was computed
    # from torch.linspace in f32 (~1e-7 relative error in the quantile levels).
    ("nf4_table", "float32"): (1e-6, 1e-7),
    # int4 kernels vs reference, f32 operands: kernel tiles sum K in a different order; with
    # K <= 256 and |y| ~ 20 the f32 reordering error is ~1e-5 absolute.
    ("int4_kernel", "float32"): (1e-5, 5e-5),
    # f16 activations in the interpreter: W is cast to f16 on both sides, the kernel then upcasts
    # the operands to f32 for tl.dot (DOT_FP32) and sums in tile order; y is stored as f16
    # (1 ulp = 2^-11 relative) and |y| ~ 20 here.
    ("int4_kernel", "float16"): (4e-3, 2e-2),
    # GPU, |y| ~ 1 (x scaled by 1/sqrt(K)), K up to 11008. bf16: W cast to bf16 on both sides,
    # summed in a different order in f32, then y rounded to bf16 (rel. 2^-9): a few ulps.
    ("int4_kernel_gpu", "bfloat16"): (2e-2, 2e-2),
    # f16: 11-bit mantissa, same argument as bf16 with 8x smaller ulps.
    ("int4_kernel_gpu", "float16"): (4e-3, 4e-3),
    # f32 activations: the kernel's tl.dot is IEEE f32, but XLA's default-precision f32 dot on
    # Hopper may run TF32 (rel. 2^-11 per product); that error grows like sqrt(K)·2^-11·|x||w|.
    ("int4_kernel_gpu", "float32"): (1e-2, 1e-2),
    # RoPE in f32 vs complex rotation in f64: the f32 angle pos·θ_j carries ~pos·2^-24 rad of
    # error (positions <= 40 here → ~3e-6 rad), times |x| ~ 3.
    ("rope_angle", "float32"): (1e-5, 2e-5),
    # Whole-model f32 logits along two different graphs (scan vs loop, KV cache vs full
    # recompute, sharded vs unsharded, remat): reordered sums over several layers, |logit| ~ 3.
    ("model_f32", "float32"): (1e-5, 2e-5),
    # Double-quantized vs plain f32 absmax (QLoRA §3): each absmax moves by at most half an
    # int8 step, max|c − mean| / 254 of its block (0.3 % relative on a random-init model), so
    # every weight and each linear's output moves by ≲ 0.3 %; two blocks + head, |logit| ~ 1.5
    # → ≲ 5e-3 (measured 6.4e-4, nf4 and fp4 at block 32).
    ("double_quant_logits", "float32"): (0.0, 5e-3),
    # A loss as `compactlm eval` prints it (4 decimals: ±5e-5) against the same model's loss
    # computed in another process or after merging an adapter in f32 (~1e-6): 1e-4.
    ("printed_loss", "float32"): (0.0, 1e-4),
    # 2:4 kernels vs reference: the same W (materialized in x's dtype on both sides, products
    # exact in f32), summed in another order (K tiles, split-K partials); K <= 256, |y| ~ 20.
    ("sparse24_kernel", "float32"): (1e-5, 5e-5),
    # ... with y stored as f16: both sides round nearly equal f32 sums, 1 ulp = 2^-10 relative.
    ("sparse24_kernel", "float16"): (2e-3, 2e-3),
    # GPU bf16: same W on both sides, f32 sums in another order, then y rounded to bf16: two
    # nearly equal sums can round 1 bf16 ulp apart (2^-7 relative just above a power of two).
    ("sparse24_kernel", "bfloat16"): (1e-2, 1e-2),
    # Training losses along two summation orders over a few Adam steps (8-way data x fsdp x
    # tensor vs 1 device; 4 accumulated micro-batches vs one batch): the
    # all-reduces sum gradients in another order (~1e-7 rel.), Adam's 1/sqrt(v) amplifies it a
    # little per step; |loss| ~ 5.
    ("train_loss_reordered", "float32"): (2e-5, 2e-5),
    # Distillation divergences in f32 (log_softmax, then Σ over V <= 64 terms) vs NumPy f64 from
    # the definition: log-probs carry ~1e-7·|logit| absolute error (|logit/T| <= ~12 here), the
    # divergences are O(0.1-10) nats.
    ("divergence", "float32"): (1e-5, 2e-6),
    # cuDNN flash attention vs XLA, bf16 operands/outputs (GPU): both round |out| <~ 1 to bf16
    # (ulp 2^-8) but flash's online softmax rescales and sums in another order: a few ulps.
    ("attention", "bfloat16"): (2e-2, 2e-2),
    # Whole model at bf16 compute (GPU), cuDNN vs XLA attention: those few-ulp differences pass
    # through every later bf16 layer and the residual stream before the f32 logits.
    ("model_attention", "bfloat16"): (5e-2, 5e-2),
}


def tol(name: str, dtype: str = "float32") -> dict[str, float]:
    """Keyword arguments for np.testing.assert_allclose."""
    rtol, atol = TOL[(name, dtype)]
    return {"rtol": rtol, "atol": atol}
