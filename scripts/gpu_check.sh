#!/usr/bin/env bash
# The GPU tier in one prepared run (docs/architecture.md §5), ordered by value, every step under its own
# timeout, everything written into $OUT as it happens; the whole run stays under 5 minutes.
#
#   bash scripts/gpu_check.sh --fetch-wheels   (dev machine, network) jax-triton 0.4.1 for
#       Python 3.12 into .whl/ (gitignored; the GPU image runs 3.12 and lacks only jax-triton;
#       pip skips jax-triton 0.4.1 for the 3.11 default python3, so the target is explicit).
#       pytest is never carried: the image's own pytest and plugins stay in charge.
#   OUT=/dir bash scripts/gpu_check.sh         (H100 / H200, no network, .whl/ carried)
#   OUT=/dir bash scripts/gpu_check.sh --dry-run   (any machine: every step on the CPU with
#       impl=reference and tiny shapes, and the carried wheel installed and imported with a
#       Python 3.12; tests/test_gpu_check.py runs this)
#
# Steps (files in $OUT): 1 env.txt: versions, devices, `import jax_triton` — stop (exit 3) if it
# fails, since every later figure would silently be the reference; 2 bandwidth (measured, in
# run.log); 3 the 8192² decode targets with their errors, impl=triton (targets/); 4 the GPU
# test files (tests.log); 5 the other shapes (rest/). run.log has every step's output.
# Knobs: PYTHON, WHEEL_DIR, TARGET_TIMEOUT_S, TEST_TIMEOUT_S, TARGET_MS, REST_SHAPES.
set -uo pipefail
cd "$(dirname "$0")/.."
WHEEL_DIR=${WHEEL_DIR:-.whl}
JAX_TRITON="jax-triton==0.4.1"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEEL_DIR"
  # A pure-Python wheel, fetched for the GPU image's interpreter, not this machine's.
  ${PIP:-python3 -m pip} download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp -d "$WHEEL_DIR" "$JAX_TRITON"
  exit $?
fi

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
LOG="$OUT/run.log"
: >"$LOG"
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
# step NAME SECONDS CMD...: run CMD under its own timeout, output appended to run.log as it comes
step() {
  local name=$1 limit=$2
  shift 2
  say "== $name (timeout ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  say "== $name exit $rc"
  return "$rc"
}

if [ "$DRY" = 1 ]; then
  # CPU rehearsal: the same steps, the reference kernels, tiny shapes.
  PYTHON=${PYTHON:-.venv/bin/python}
  export JAX_PLATFORMS=cpu
  IMPL=reference
  TARGETS="shapes=256x256 ms=1,4 calls=2 repeats=1 rotate_mb=1 bandwidth_mb=1"
  REST="shapes=512x256 ms=1 calls=2 repeats=1 rotate_mb=1 bandwidth_mb=1"
else
  PYTHON=${PYTHON:-python3}
  unset TRITON_INTERPRET JAX_PLATFORMS
  IMPL=triton
  TARGETS="shapes=8192x8192 ms=${TARGET_MS:-1,16,256}"
  REST="shapes=${REST_SHAPES:-4096x4096,llama3_8b_mlp_up,llama3_8b_mlp_down} ms=1,16,1024"
fi
# Per-step limits (s): 30 + 45 + 30 + 110 + 75 = 290 at worst; the rest gets what is left of 290.
TARGET_LIMIT=${TARGET_TIMEOUT_S:-110}
TEST_LIMIT=${TEST_TIMEOUT_S:-75}

# ---------------------------------------------------------------- 1. environment + jax_triton
SITE=$(mktemp -d /tmp/compactlm_site.XXXXXX)
if ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
  step "install carried wheels" 30 "$PYTHON" -m pip install -q --no-index --no-deps \
    --no-compile --target "$SITE" "$WHEEL_DIR"/*.whl
else
  say "no wheels in $WHEEL_DIR: jax-triton must already be importable"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export COMPACTLM_GPU_TESTS=$(( 1 - DRY ))
say "== environment (timeout 45s)"
timeout --kill-after=5 45 "$PYTHON" - <<EOF >"$OUT/env.txt" 2>&1
import subprocess, sys, time
print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                          "clocks.max.memory", "--format=csv"], capture_output=True,
                         text=True, timeout=20).stdout.strip())
except (OSError, subprocess.SubprocessError) as e:
    print("nvidia-smi:", e)
import jax, numpy, triton
print("python", sys.version.split()[0], "jax", jax.__version__, "triton", triton.__version__,
      "numpy", numpy.__version__)
print("devices", jax.devices())
if sys.version_info[:2] != (3, 12):
    sys.exit(f"python {sys.version.split()[0]}: jax-triton 0.4.1 needs 3.12")
from compactlm.kernels import _launch
jt = _launch._jax_triton()  # the triton 3.6 shim, then the import; ImportError stops the run
import importlib.metadata as md
print("jax_triton", md.version("jax-triton"), "from", jt.__file__)
print("on_cuda", _launch.on_cuda(), "kind", _launch.device_kind(), "cc",
      _launch.compute_capability())
if not $DRY and not _launch.on_cuda():
    sys.exit("no CUDA device: every figure would be the reference")
EOF
ENV_RC=$?
tee -a "$LOG" <"$OUT/env.txt"
if [ "$ENV_RC" != 0 ]; then
  say "STOP: the environment check failed (see env.txt); nothing else would be meaningful"
  exit 3
fi

# ---------------------------------------------------------------- 2. measured bandwidth
step "bandwidth" 30 "$PYTHON" -c "
from compactlm.benchmarks.bench_kernels import measure_bandwidth
print(f'measured bandwidth {measure_bandwidth($( [ $DRY = 1 ] && echo 2**20 || echo 2**28 )) / 1e9:.1f} GB/s')"

# ---------------------------------------------------------------- 3. the 8192² decode targets
step "targets" "$TARGET_LIMIT" "$PYTHON" -m compactlm.benchmarks.bench_kernels impl=$IMPL $TARGETS \
  out="$OUT/targets"

# ---------------------------------------------------------------- 4. GPU test files
# Named files only (no whole-tree import); the configured addopts (--import-mode=importlib,
# --strict-markers) stay, `-m gpu` overrides their marker filter.
step "gpu tests" "$TEST_LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
  tests/kernels/test_gpu_int4.py tests/kernels/test_gpu_sparse24.py \
  tests/models/test_gpu_attention.py >"$OUT/tests.log"

# ---------------------------------------------------------------- 5. the rest, as time allows
LEFT=$(( 290 - ($(date +%s) - T0) ))
if [ "$LEFT" -gt 20 ]; then
  step "other shapes" "$LEFT" "$PYTHON" -m compactlm.benchmarks.bench_kernels impl=$IMPL $REST \
    time_budget_s=$(( LEFT - 15 )) out="$OUT/rest"
  rm -f "$OUT/rest/bench_kernels.png"  # at most 8 files come back from a device run
else
  say "skipping other shapes: ${LEFT}s left of the 5-minute budget"
fi
say "done"
