"""Dev check (not CI): llama.cpp's perplexity on the validation text vs compactlm's, against the
cost of llama.cpp's own 8-bit activation quantization.

    PYTHONPATH=/path/with/llama_cpp .venv/bin/python scripts/check_gguf_perplexity.py \
        QUANT_RUN Q4_0/model.gguf F32/model.gguf [max_tokens]

QUANT_RUN: an int4 run quantized with `scale_dtype=float16` (so its Q4_0 export holds its codes
and scales bit for bit); Q4_0: `compactlm export QUANT_RUN format=gguf` (type=auto); F32:
`compactlm export QUANT_RUN format=gguf type=f32`, the same dequantized weights in float32.

On a Q4_0 matrix llama.cpp's CPU matmul quantizes the activations to Q8_0 blocks first (ggml's
`vec_dot_type` of Q4_0); on an F32 matrix it does not. Both files hold the same weight values, so
llama.cpp(Q4_0) − llama.cpp(F32) is the cost of that 8-bit activation rounding alone, while
compactlm computes with the dequantized weights in float32. The check: |compactlm −
llama.cpp(Q4_0)| is within that cost (and compactlm ≈ llama.cpp(F32)). Every number is over the
windows of compactlm's validation eval, with our tokenizer's ids fed to llama.cpp
(compactlm/interop/llamacpp.py).
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from compactlm.interop import llamacpp
    from compactlm.train.loop import load_run

    llamacpp.require()
    run_dir, q4_path, f32_path = argv[:3]
    max_tokens = int(argv[3]) if len(argv) > 3 else 0
    trainer = load_run(run_dir)
    t = trainer.cfg.train
    data = trainer.data
    rows = {}
    t0 = time.perf_counter()
    rows["compactlm (int4 run, f32 compute)"] = trainer.evaluate(max_tokens=max_tokens)
    print(f"  compactlm eval: {time.perf_counter() - t0:.1f}s", flush=True)
    for name, path in (("llama.cpp Q4_0", q4_path), ("llama.cpp F32 (same weights)", f32_path)):
        t0 = time.perf_counter()
        rows[name] = llamacpp.perplexity(
            path,
            data.val_tokens,
            byte_lengths=data.tokenizer.token_byte_lengths(),
            seq_len=t.seq_len,
            max_tokens=max_tokens,
        )
        print(f"  {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    counts = {(int(r["tokens"]), int(r["bytes"])) for r in rows.values()}
    assert len(counts) == 1, f"the three scored different targets: {counts}"
    ours, q4, f32 = rows.values()
    print(f"\nllama-cpp-python {llamacpp.version()}; {counts.pop()} (targets, bytes); "
          f"windows of {t.seq_len}")  # fmt: skip
    print("| model | nll (nats/token) | ppl | bits/byte |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['loss']:.6f} | {r['ppl']:.4f} | {r['bpb']:.6f} |")
    cost = q4["loss"] - f32["loss"]
    gap = ours["loss"] - q4["loss"]
    print(
        f"\n8-bit activation cost, llama.cpp Q4_0 − F32: {cost:+.2e} nats/token "
        f"({q4['bpb'] - f32['bpb']:+.2e} bpb)\n"
        f"compactlm − llama.cpp Q4_0: {gap:+.2e} nats/token; "
        f"compactlm − llama.cpp F32: {ours['loss'] - f32['loss']:+.2e}"
    )
    within = abs(gap) <= abs(cost) + 1e-6  # 1e-6: float32 summation noise over the windows
    print(f"compactlm within llama.cpp's activation cost: {within}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
