#!/usr/bin/env bash
# The GPU tier in one prepared run (DESIGN.md §6): gpu-marked tests + kernel benchmark → $OUT.
#
# On the dev machine (network), once:   bash scripts/gpu_check.sh --fetch-wheels
#   downloads the pure-Python wheels the GPU image lacks into .whl/ (gitignored): jax-triton
#   (never installed there) and pytest with its two dependencies (in case the image has none).
# On the H100 / H200 machine (no network; jax 0.11.2 CUDA, triton 3.6.0, flax, optax there),
#   from the repo root with .whl carried:   OUT=/some/dir bash scripts/gpu_check.sh
#   Writes at most 7 files into $OUT (≤ 1 folder deep) and finishes in under 8 minutes:
#   env.txt, pytest_gpu.log, bench.log, bench/bench_kernels.{csv,md,png}.
# Knobs: BENCH_FORMATS, BENCH_SHAPES, BENCH_MS, BENCH_BUDGET_S, TEST_TIMEOUT_S, PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  "$PYTHON" -m pip download --no-deps --only-binary=:all: -d .whl \
    "jax-triton==0.4.1" "pytest>=8" "pluggy>=1.5" "iniconfig>=2"
  exit $?
fi

OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT/bench"
T0=$(date +%s)

# ---------------------------------------------------------------- environment
SITE=/tmp/compactlm_site
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl 2>&1 | tail -3
else
  echo "no .whl/ carried: jax-triton must already be importable" >&2
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET JAX_PLATFORMS
export COMPACTLM_GPU_TESTS=1
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv
  "$PYTHON" - <<'EOF'
import jax, triton, numpy
print("python", __import__("sys").version.split()[0], "jax", jax.__version__,
      "triton", triton.__version__, "numpy", numpy.__version__)
print("devices", jax.devices())
from compactlm.kernels import _launch
jt = _launch._jax_triton()
print("jax_triton", jt.__version__ if hasattr(jt, "__version__") else "?", "on_cuda",
      _launch.on_cuda(), "kind", _launch.device_kind(), "cc", _launch.compute_capability())
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# ---------------------------------------------------------------- gpu-marked tests
timeout "${TEST_TIMEOUT_S:-240}" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider \
  -o addopts="--strict-markers" tests >"$OUT/pytest_gpu.log" 2>&1
echo "pytest -m gpu exit $? after $(( $(date +%s) - T0 ))s" | tee -a "$OUT/pytest_gpu.log"
tail -5 "$OUT/pytest_gpu.log"

# ---------------------------------------------------------------- kernel benchmark
ELAPSED=$(( $(date +%s) - T0 ))
BUDGET=${BENCH_BUDGET_S:-$(( 420 - ELAPSED > 60 ? 420 - ELAPSED : 60 ))}
timeout $(( BUDGET + 60 )) "$PYTHON" -m compactlm.eval.bench_kernels \
  --formats "${BENCH_FORMATS:-int4,int4_affine,nf4,fp4,sparse24,sparse24_int4}" \
  --shapes "${BENCH_SHAPES:-4096x4096,8192x8192,llama3_8b_mlp_up,llama3_8b_mlp_down}" \
  --ms "${BENCH_MS:-1,4,16,64,256,1024}" \
  --time-budget-s "$BUDGET" --out "$OUT/bench" >"$OUT/bench.log" 2>&1
echo "bench exit $? after $(( $(date +%s) - T0 ))s" | tee -a "$OUT/bench.log"
tail -40 "$OUT/bench.log"
