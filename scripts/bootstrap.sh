#!/usr/bin/env bash
# Create .venv (Python 3.12 where pyenv has it) and install compactlm with its test extras.
# Idempotent: a second run only checks that the package imports.
# --no-export-plugin: skip the CUDA export plugin (~410 MB unpacked, only the export tests and
# `bench kernels sass=1` use it); `make train` passes it, a later plain run adds the plugin.
set -euo pipefail
EXPORT_PLUGIN=1
if [ "${1:-}" = "--no-export-plugin" ]; then EXPORT_PLUGIN=0; fi
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  # grep without -q: under pipefail, `grep -q` exiting at the first match can kill pyenv with
  # SIGPIPE and fail the pipeline at random (seen: a 3.11 fallback, then exit 127).
  if command -v pyenv >/dev/null 2>&1 && pyenv versions --bare 2>/dev/null | grep -x '3.12.1' >/dev/null; then
    PYENV_VERSION=3.12.1 python -m venv "$VENV"
  elif command -v python3.12 >/dev/null 2>&1; then
    python3.12 -m venv "$VENV"
  else
    python3 -m venv "$VENV"
  fi
fi
# The console script marks an installed package (`import compactlm` alone would also succeed from
# the repo root without any install). A venv installed from another setup.py (a dependency added
# since: safetensors, cmeel-mimalloc, ...) is brought up to date by the same install: the stamp
# holds the sha256 of the setup.py it was installed from.
STAMP="$VENV/.compactlm-setup.sha256"
WANT=$(sha256sum setup.py | cut -d' ' -f1)
if [ ! -x "$VENV/bin/compactlm" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] \
  || ! "$VENV/bin/python" -c "import jax_triton" >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[test]" "jax[cpu]==0.11.2" "triton==3.6.0"
  # jax-triton's declared deps would pull another jax; it needs none beyond what is installed.
  "$VENV/bin/python" -m pip install -q --no-deps "jax-triton==0.4.1"
  echo "$WANT" > "$STAMP"
fi
# The CUDA 13 plugin (--no-deps: no CUDA libraries) registers the "cuda" lowering of
# jax-triton's custom call, so tests/kernels/test_export.py can jax.export the real Triton path
# on a CPU-only machine. It goes into its own folder, not site-packages: only the export tests put
# it on PYTHONPATH, so plain CPU runs never discover it (it would log a cuDNN error at start-up).
PLUGIN_DIR="$VENV/cuda-export"
if [ "$EXPORT_PLUGIN" = 1 ] && [ ! -d "$PLUGIN_DIR/jax_cuda13_plugin" ]; then
  "$VENV/bin/python" -m pip install -q --no-deps --target "$PLUGIN_DIR" \
    "jax-cuda13-plugin==0.11.2" "jax-cuda13-pjrt==0.11.2"
fi
