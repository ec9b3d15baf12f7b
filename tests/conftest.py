"""Test-session set-up that must happen before jax or any kernel module is imported."""

import os

# Eight host devices so mesh/sharding tests run in-process on a CPU machine; tests that do not
# build a mesh still run on device 0 only.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The GPU tier (scripts/gpu_check.sh: COMPACTLM_GPU_TESTS=1 pytest -m gpu) compiles real kernels
# on the device: no interpreter, no CPU pin.
GPU_TESTS = os.environ.get("COMPACTLM_GPU_TESTS", "0") == "1"
if GPU_TESTS:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    # The Triton interpreter is chosen at @triton.jit decoration time, so it must be on before any
    # compactlm.kernels module is imported (docs/architecture.md §3).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache per test session: many tests build the same `nano`
# program in fresh Trainers (resume, eval after train); identical HLO then compiles once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="compactlm-xla-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# jaxtyping annotations are checked under pytest only (docs/architecture.md §7; free in runs): every
# compactlm module that uses jaxtyping is imported through jaxtyping's import hook, with beartype
# checking each call's array annotations (tests/typecheck.py). Installed before anything imports
# compactlm; tests/test_jaxtyping.py proves it is live.
import tests.typecheck  # noqa: E402

tests.typecheck.install()


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def nano_run(tmp_path_factory):
    """A 1-step nano run on pydocs that tests only read; tests that must leave it untouched
    compare `tests.files.digests` before and after."""
    from compactlm.config import make_config
    from compactlm.train.loop import run as run_training

    root = tmp_path_factory.mktemp("nano_run")
    quiet = ["train.progress=false", "train.eval_every=0", "train.tensorboard=false"]
    with pytest.MonkeyPatch.context() as mp:  # (only while training: no leak into other tests)
        mp.setenv("COMPACTLM_CACHE", str(root / "cache"))
        run_training(
            make_config("nano", ["train.steps=1", "data.corpus=pydocs", *quiet]), root / "run"
        )
    return root / "run"
