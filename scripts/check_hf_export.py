"""Dev check (by hand, never in CI): transformers loads `compactlm export` output with each family's
own class and gives our logits. Two steps in two venvs (torch stays out of compactlm's):

    .venv/bin/python scripts/check_hf_export.py ours RUN_DIR HF_DIR ...  # ours -> HF_DIR/ours.npz
    DEVVENV/bin/python scripts/check_hf_export.py theirs HF_DIR ...     # transformers', compared

(dev venv: tests/fixtures/hf/README.md). Results: docs/models.md.
"""

import sys

import numpy as np

IDS = np.array([[1, 17, 42, 99, 7, 250, 3, 64, 128, 5, 77, 200]], np.int32)


def ours(pairs: list[str]) -> None:
    import jax.numpy as jnp

    from compactlm.train.loop import load_run

    for run_dir, hf_dir in zip(pairs[::2], pairs[1::2], strict=True):
        t = load_run(run_dir)
        logits = np.asarray(t.program.model(t.state)(jnp.asarray(IDS)), np.float32)
        np.savez(f"{hf_dir}/ours.npz", ids=IDS, logits=logits)


def theirs(hf_dirs: list[str]) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    for hf_dir in hf_dirs:
        ref = np.load(f"{hf_dir}/ours.npz")
        model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        with torch.no_grad():
            logits = model(torch.tensor(ref["ids"]).long()).logits.numpy()
        diff = float(np.abs(logits - ref["logits"][..., : logits.shape[-1]]).max())
        print(f"{hf_dir}: {type(model).__name__}, max |logit diff| {diff:.3g}")


if __name__ == "__main__":
    {"ours": ours, "theirs": theirs}[sys.argv[1]](sys.argv[2:])
