"""Dev check (not CI): llama.cpp itself loads compactlm's GGUF exports and agrees with compactlm.

Run with a Python that has both compactlm and llama-cpp-python (docs/deployment.md says how it
was built here):

    PYTHONPATH=/work/main /work/devvenv-llamacpp/bin/python scripts/check_gguf_llamacpp.py \
        RUN_DIR F32_EXPORT/model.gguf [Q4_0_EXPORT/model.gguf] [QUANT_RUN_DIR]

(`scripts/check_gguf_perplexity.py` compares perplexities.)

1. The F32 export of RUN_DIR: llama.cpp's greedy continuation of a prompt must equal
   compactlm's (full forward each step, argmax) token for token; the max |logit difference| of
   the prompt's last position is printed.
2. The Q4_0 export (optional) of QUANT_RUN_DIR: llama.cpp loads it and its greedy continuation
   is compared with the quantized run's, printing the first position where they differ (f16
   scales are not always the run's f32 scales: the export prints that error).
The prompt is tokenized by compactlm and fed to llama.cpp as ids, so the check is of the
weights and the architecture; llama.cpp's own tokenization of the text is printed beside ours.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

PROMPT = "The Python Language Reference"
NEW_TOKENS = 24


def compactlm_greedy(run_dir: str, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    import jax.numpy as jnp

    from compactlm.train.loop import load_run

    trainer = load_run(run_dir)
    model = trainer.program.model(trainer.state)
    seq, first = list(ids), None
    for _ in range(n):
        logits = np.asarray(model(jnp.asarray([seq], jnp.int32)), np.float32)[0, -1]
        first = logits if first is None else first
        seq.append(int(np.argmax(logits)))
    return seq[len(ids) :], first


def llamacpp_greedy(path: str, ids: list[int], n: int) -> tuple[list[int], np.ndarray, Any]:
    from compactlm.interop import llamacpp  # the one module that imports llama_cpp

    llm = llamacpp.load(path, n_ctx=128, logits_all=True, threads=1)
    llm.eval(ids)
    first = np.array(llm.scores[len(ids) - 1], np.float32)
    out = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, reset=True):
        out.append(int(tok))
        if len(out) == n:
            break
    return out, first, llm


def main(argv: list[str]) -> int:
    from compactlm.data import load_tokenizer

    run_dir, f32_path = argv[0], argv[1]
    tok = load_tokenizer(run_dir)
    ids = [int(i) for i in tok.encode(PROMPT)]
    ours, our_logits = compactlm_greedy(run_dir, ids, NEW_TOKENS)
    theirs, their_logits, llm = llamacpp_greedy(f32_path, ids, NEW_TOKENS)
    n_vocab = len(their_logits)
    diff = float(np.max(np.abs(our_logits[:n_vocab] - their_logits)))
    same = ours == theirs
    print(
        f"F32: greedy {NEW_TOKENS} tokens equal: {same}; max |logit diff| at the prompt's end "
        f"{diff:.3g}"
    )
    print(f"  compactlm: {tok.decode(ours)!r}\n  llama.cpp: {tok.decode(theirs)!r}")
    their_ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=False)
    print(
        f"  prompt ids: ours {ids[:12]}... llama.cpp's tokenizer {their_ids[:12]}... "
        f"equal: {list(their_ids) == ids}"
    )
    ok = same
    if len(argv) > 2:
        q_run = argv[3] if len(argv) > 3 else run_dir
        q_ours, _ = compactlm_greedy(q_run, ids, NEW_TOKENS)
        q_theirs, _, _ = llamacpp_greedy(argv[2], ids, NEW_TOKENS)
        agree = next(
            (i for i, (a, b) in enumerate(zip(q_ours, q_theirs, strict=False)) if a != b), None
        )
        print(
            f"Q4_0: loaded; greedy tokens equal: {q_ours == q_theirs}"
            + ("" if agree is None else f" (first difference at new token {agree})")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
