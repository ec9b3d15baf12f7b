"""safetensors files in: one file or the shards an index lists (pickle files are never read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compactlm.interop.hf_config import InteropError
from compactlm.train.metrics import StageProgress

HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
# Above this many bytes of weights, import and export say what they are doing on stderr: a
# per-tensor bar (or ~10 lines off a terminal) while reading weights, a line per stage with its
# time. Below it they take seconds and stay quiet: nano to small (12.7M params, 51 MB in f32);
# base (122M) and any Hub Llama are above.
PROGRESS_BYTES = 64 * 2**20


def read_safetensors(hf_dir: Path) -> dict[str, Any]:
    """All tensors of `hf_dir` (model.safetensors, or the shards its index.json lists)."""
    from safetensors import safe_open

    index = hf_dir / HF_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InteropError(f"{index} is not a safetensors index (weight_map): {e}") from e
        files = sorted({hf_dir / f for f in weight_map.values()})
    else:
        files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in hf_dir.glob("*.bin")) + sorted(
            p.name for p in hf_dir.glob("*.pt*")
        )
        hint = f" (found {other}: pickle files are never loaded)" if other else ""
        raise InteropError(f"no *.safetensors weights in {hf_dir}{hint}")
    tensors: dict[str, Any] = {}
    for path in files:
        if not path.is_file():
            raise InteropError(f"{path.name} (listed in {HF_INDEX}) is missing")
    try:
        # Headers only (no tensor data): the count for the progress display.
        total = 0
        for path in files:
            with safe_open(str(path), framework="flax") as f:
                total += len(f.keys())
        bar = StageProgress(
            f"import: reading weights from {len(files)} file{'s' * (len(files) > 1)}",
            total=total,
            unit="tensor",
            lines=10,
            enabled=sum(path.stat().st_size for path in files) > PROGRESS_BYTES,
        )
        with bar:
            for path in files:
                # framework="flax": numpy has no bfloat16; jax arrays (ml_dtypes) do.
                with safe_open(str(path), framework="flax") as f:
                    for name in f.keys():
                        if name in tensors:
                            raise InteropError(f"tensor {name} appears in two files ({path.name})")
                        tensors[name] = np.asarray(f.get_tensor(name))
                        bar.advance()
    except InteropError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError for bad files
        raise InteropError(f"{path} is not a readable safetensors file ({e})") from e
    return tensors
