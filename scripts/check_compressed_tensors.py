"""Dev check (by hand, never in CI): transformers + compressed-tensors load `compactlm export
RUN format=compressed-tensors` (decompressing on CPU) and give the quantized run's logits. Two
steps in two venvs (torch stays out of compactlm's):

    .venv/bin/python scripts/check_compressed_tensors.py ours RUN_DIR CT_DIR ...  # CT_DIR/ours.npz
    DEVVENV/bin/python scripts/check_compressed_tensors.py theirs CT_DIR ...      # compared

Dev venv: /work/devvenv (torch 2.13.0+cpu, transformers 5.25.0) plus
`pip install --no-deps compressed-tensors==0.20.1 loguru` (torch untouched). Results:
docs/deployment.md, "compressed-tensors".
"""

import sys

import numpy as np

IDS = np.array([[1, 17, 42, 99, 7, 250, 3, 64, 128, 5, 77, 200]], np.int32)
TOLERANCE = 1e-4  # max |logit diff|: both sides dequantize to the same f32 weights


def ours(pairs: list[str]) -> None:
    import jax.numpy as jnp

    from compactlm.train.loop import load_run

    for run_dir, ct_dir in zip(pairs[::2], pairs[1::2], strict=True):
        t = load_run(run_dir)
        logits = np.asarray(t.program.model(t.state)(jnp.asarray(IDS)), np.float32)
        np.savez(f"{ct_dir}/ours.npz", ids=IDS, logits=logits)


def theirs(ct_dirs: list[str]) -> int:
    import compressed_tensors
    import torch
    from transformers import AutoModelForCausalLM

    worst = 0.0
    for ct_dir in ct_dirs:
        ref = np.load(f"{ct_dir}/ours.npz")
        model = AutoModelForCausalLM.from_pretrained(
            ct_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        packed = sum(n.endswith("weight_packed") for n, _ in model.named_parameters())
        with torch.no_grad():
            logits = model(torch.tensor(ref["ids"]).long()).logits.numpy()
        # The forward decompresses (compressed-tensors' hook); what remains packed now:
        left = sum(n.endswith("weight_packed") for n, _ in model.named_parameters())
        diff = float(np.abs(logits - ref["logits"][..., : logits.shape[-1]]).max())
        worst = max(worst, diff)
        print(
            f"{ct_dir}: {type(model).__name__} (compressed-tensors "
            f"{compressed_tensors.__version__}, torch {torch.__version__}), {packed} packed "
            f"linears loaded, {left} after the forward, max |logit diff| {diff:.3g}"
        )
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit({"ours": ours, "theirs": theirs}[sys.argv[1]](sys.argv[2:]) or 0)
