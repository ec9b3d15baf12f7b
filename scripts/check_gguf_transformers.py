"""Dev check (by hand, never in CI): transformers' GGUF loader reads `compactlm export RUN
format=gguf` (dequantizing with gguf-py, undoing llama's q / k permutation itself) and gives
compactlm's logits. Two steps in two venvs (torch stays out of compactlm's):

    .venv/bin/python scripts/check_gguf_transformers.py ours RUN_DIR GGUF_DIR ...  # ours.npz
    DEVVENV/bin/python scripts/check_gguf_transformers.py theirs GGUF_DIR ...      # compared

`ours` saves two sets of logits for fixed ids: the run's own, and the run computing with the
file's block linears (interop/gguf_values.py: read back by gguf-py, loaded into the run's dense
model). The second is the check (same weights, so within f32 rounding); the first says what the
export itself changed (0 for F32, the f16 scales of Q4_0, the requantization of Q8_0).

Dev venv: /work/devvenv (torch 2.13.0+cpu, transformers 5.25.0) plus
`pip install --no-deps gguf==0.19.0` (torch untouched). Results: docs/deployment.md,
"transformers' GGUF loader".
"""

import sys
from importlib.metadata import version

import numpy as np

IDS = np.array([[1, 17, 42, 99, 7, 250, 3, 64, 128, 5, 77, 200]], np.int32)
TOLERANCE = 1e-4  # max |logit diff| against the file's weights in compactlm (f32 both sides)
GGUF_FILE = "model.gguf"


def ours(pairs: list[str]) -> None:
    import gguf
    import jax.numpy as jnp

    from compactlm.interop import gguf_values
    from compactlm.train.loop import load_run

    for run_dir, gguf_dir in zip(pairs[::2], pairs[1::2], strict=True):
        path = f"{gguf_dir}/{GGUF_FILE}"
        arch = gguf.GGUFReader(path).fields["general.architecture"].contents()
        t = load_run(run_dir)
        run = np.asarray(t.program.model(t.state)(jnp.asarray(IDS)), np.float32)
        f = gguf_values.trainer_with(t, gguf_values.read_linears(path, t.cfg, arch))
        file = np.asarray(f.program.model(f.state)(jnp.asarray(IDS)), np.float32)
        np.savez(f"{gguf_dir}/ours.npz", ids=IDS, logits=run, logits_file=file)


def gemma3_keys(reader) -> dict:
    """The gemma3 config that llama.cpp reads from the file and transformers' GGUF loader (5.25.0)
    does not: which layers slide (it assumes 5 of 6), the local RoPE base, and the attention
    scale (llama.cpp: 1/√head_dim, transformers' default query_pre_attn_scalar 256)."""

    def key(name):
        f = reader.fields[f"gemma3.{name}"]
        return [f.contents(i) for i in range(len(f.data))] if len(f.data) > 1 else f.contents()

    slides = key("attention.sliding_window_pattern")
    slides = slides if isinstance(slides, list) else [slides]
    rope = {"rope_type": "default"}
    return {
        "layer_types": ["sliding_attention" if s else "full_attention" for s in slides],
        "query_pre_attn_scalar": key("attention.key_length"),
        "rope_parameters": {
            "full_attention": rope | {"rope_theta": key("rope.freq_base")},
            "sliding_attention": rope | {"rope_theta": key("rope.freq_base_swa")},
        },
    }


def theirs(gguf_dirs: list[str]) -> int:
    import gguf
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    worst = 0.0
    for gguf_dir in gguf_dirs:
        ref = np.load(f"{gguf_dir}/ours.npz")
        reader = gguf.GGUFReader(f"{gguf_dir}/{GGUF_FILE}")
        types = sorted({t.tensor_type.name for t in reader.tensors})
        arch = reader.fields["general.architecture"].contents()
        tries = [("as transformers reads the file", {})]
        if arch == "gemma3":
            tries.append(("given the gemma3 keys it ignores", gemma3_keys(reader)))
        for label, config in tries:
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    gguf_dir,
                    gguf_file=GGUF_FILE,
                    dtype=torch.float32,
                    attn_implementation="eager",
                    **config,
                ).eval()
            except (RuntimeError, ValueError) as e:  # a loader limit: reported, the next runs
                print(f"{gguf_dir}: transformers refused it: {str(e).splitlines()[0]}")
                worst = float("inf")
                continue
            with torch.no_grad():
                logits = model(torch.tensor(ref["ids"]).long()).logits.numpy()
            V = logits.shape[-1]
            diff = float(np.abs(logits - ref["logits_file"][..., :V]).max())
            run = float(np.abs(logits - ref["logits"][..., :V]).max())
            worst = max(worst, diff) if label == tries[-1][0] else worst
            print(
                f"{gguf_dir} ({type(model).__name__}, {types}), {label}: max |logit diff| "
                f"{diff:.3g} vs compactlm on the file's weights, {run:.3g} vs the run"
            )
    print(f"transformers {transformers.__version__}, gguf {version('gguf')}, ", end="")
    print(f"torch {torch.__version__}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit({"ours": ours, "theirs": theirs}[sys.argv[1]](sys.argv[2:]) or 0)
