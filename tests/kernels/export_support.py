"""Shared runner for the jax.export-for-CUDA tests: a subprocess with the CUDA plugin on its path.

The jax-cuda13 plugin (installed --no-deps by scripts/bootstrap.sh into `<venv>/cuda-export`, not
site-packages) provides jaxlib's `gpu_triton.TritonKernel`, which lowering a jax-triton call for
"cuda" needs. It lives outside site-packages so that ordinary CPU runs of compactlm never
discover it (it logs a cuDNN traceback at start-up when no GPU is present).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path(os.environ.get("COMPACTLM_CUDA_EXPORT_DIR", Path(sys.prefix) / "cuda-export"))

requires_plugin = pytest.mark.skipif(
    not (PLUGIN_DIR / "jax_cuda13_plugin").is_dir(),
    reason=f"needs jax-cuda13-plugin==0.11.2 + jax-cuda13-pjrt installed --no-deps into "
    f"{PLUGIN_DIR} (scripts/bootstrap.sh does it; CI runs this test)",
)


def run_export_script(suite: str, out: Path) -> dict:
    """Run tests/kernels/cuda_export.py SUITE OUT.json: interpreter off, plugin importable."""
    # The interpreter must be off so the kernels stay JITFunctions that jax-triton can lower.
    env = dict(os.environ, TRITON_INTERPRET="0", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(PLUGIN_DIR)]))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/kernels/cuda_export.py"), suite, str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def check_case(result: dict, expected_avals: list[str]) -> None:
    assert result["ok"], result.get("error")
    assert result["platforms"] == ["cuda"]
    assert result["triton_calls"] == result["expected_calls"], result
    assert result["out_avals"] == expected_avals
