"""llama.cpp's architectures for compactlm's families: the name, what each cannot compute, and
the metadata and tensor values it needs beyond the llama architecture's.

Read from llama.cpp as vendored in llama-cpp-python 0.3.36 (`src/models/<arch>.cpp`'s
`load_arch_hparams` and graph, `conversion/gemma.py` / `llama.py`, convert_hf_to_gguf's
classes), and checked by running it (docs/deployment.md):

| family      | llama.cpp | RoPE pairs            | what differs                                   |
|-------------|-----------|-----------------------|------------------------------------------------|
| llama       | llama     | interleaved: permuted | —                                              |
| qwen2/qwen3 | qwen2/3   | NEOX: as stored       | q/k/v biases; q/k norms                        |
| smollm3     | smollm3   | interleaved: permuted | NoPE on layers i with (i + 1) % 4 == 0, fixed  |
| gemma3_text | gemma3    | NEOX: as stored       | norms stored as the gain 1 + w (Gemma3Model's  |
|             |           |                       | norm_shift); √D embedding scale, GeGLU built   |
|             |           |                       | in; sliding window, its layers, its RoPE base  |

llama.cpp's gemma3 scales q by 1/√head_dim (1/√(D/N) for its 62-layer 27B), never by
query_pre_attn_scalar: another value is folded into the q norm's gain (RoPE is linear, so
(g·c)·q rotated = c·(g·q rotated)), c = √(llama.cpp's denominator / query_pre_attn_scalar).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compactlm.interop.hf_config import InteropError

# compactlm family (hf_config.Family.model_type) → llama.cpp architecture (gguf.MODEL_ARCH_NAMES)
ARCHITECTURES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "smollm3": "smollm3",
    "gemma3_text": "gemma3",
}
# LLAMA_ROPE_TYPE_NORM architectures: rotated pairs are (2i, 2i + 1), so q / k rows are permuted
# from HF's rotate-half order (convert_hf_to_gguf's LlamaModel.permute; SmolLM3Model is one).
PERMUTED = ("llama", "smollm3")
# smollm3.cpp: `n_no_rope_layer_step = 4`, not read from the file.
SMOLLM3_NO_ROPE_STEP = 4
# gemma3.cpp: the 62-layer model (27B) scales q by 1/√(D/N) instead of 1/√head_dim.
GEMMA3_27B_LAYERS = 62


def smollm3_rope_flags(n_layers: int) -> tuple[bool, ...]:
    """Which layers llama.cpp's smollm3 rotates: all but every fourth."""
    return tuple((i + 1) % SMOLLM3_NO_ROPE_STEP != 0 for i in range(n_layers))


def check(m: Any, arch: str) -> None:
    """Refuse, from the config alone, what `arch` computes differently from the run."""
    if arch == "smollm3":
        flags = m.rope_flags() or (True,) * m.n_layers
        want = smollm3_rope_flags(m.n_layers)
        if flags != want:
            raise InteropError(
                f"model.no_rope_layers={[int(f) for f in flags]}: llama.cpp's smollm3 drops RoPE "
                f"on every {SMOLLM3_NO_ROPE_STEP}th layer, fixed ({[int(f) for f in want]}); "
                "valid: that pattern"
            )


def gemma3_q_factor(m: Any) -> float:
    """c with which the q norm's gain carries query_pre_attn_scalar (1.0 when llama.cpp's own
    scale is the run's)."""
    H = m.resolved_head_dim
    denominator = m.d_model / m.n_heads if m.n_layers == GEMMA3_27B_LAYERS else H
    return math.sqrt(denominator / (m.query_pre_attn_scalar or H))


def vector(hf_name: str, w: np.ndarray, m: Any, arch: str) -> tuple[np.ndarray, str]:
    """A norm weight / bias as `arch` stores it, and how it was made."""
    w = np.asarray(w, np.float32)
    if arch != "gemma3" or not hf_name.endswith("norm.weight"):
        return w, "as stored"
    gain = np.float32(1.0) + w  # f32, as RMSNorm.gain computes it
    c = gemma3_q_factor(m)
    if hf_name.endswith("q_norm.weight") and c != 1.0:
        return gain * np.float32(c), "gain (1+w)·c"
    return gain, "gain 1+w"


def metadata(writer: Any, m: Any, arch: str) -> None:
    """The keys `arch` reads beyond the llama architecture's (gemma3.cpp's load_arch_hparams)."""
    if arch != "gemma3":
        return
    flags = m.sliding_flags()
    if flags is not None:
        writer.add_sliding_window(m.sliding_window)
        writer.add_sliding_window_pattern(list(flags))  # per layer: llama.cpp reads an array
        writer.add_rope_freq_base_swa(m.rope_local_theta)


def llama_permute_index(rows: int, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's `LlamaModel.permute` as a row index: within each head, HF's
    rotate-half order (first half, second half) becomes interleaved pairs (i, H/2 + i)."""
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def tensor_order(name: str) -> tuple:
    """Embedding, then the blocks in order, then the final norm and head (llama.cpp's order)."""
    if name.startswith("model.layers."):
        return (1, int(name.split(".")[2]), name)
    return (0 if "embed" in name else 2, 0, name)
