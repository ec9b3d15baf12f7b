"""scripts/gpu_check.sh on the CPU: the wheel fetch targets Python 3.12, the dry run works."""

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_script(*args, env=None, timeout=240):
    env = {**os.environ, **(env or {})}
    for key in ("TRITON_INTERPRET", "JAX_PLATFORMS", "COMPACTLM_GPU_TESTS", "XLA_FLAGS"):
        env.pop(key, None)  # the script sets its own, as on the GPU machine
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def test_fetch_wheels_asks_for_python_312_jax_triton_only(tmp_path):
    proc = run_script("--fetch-wheels", env={"PIP": "echo pip", "WHEEL_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout.split()
    assert cmd[:2] == ["pip", "download"] and "jax-triton==0.4.1" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert {"--no-deps", "--only-binary=:all:"} <= set(cmd)
    assert [c for c in cmd if "==" in c] == ["jax-triton==0.4.1"]  # never pytest: the image's


def repack_installed_wheel(dist: str, out: Path) -> Path:
    """A wheel of an installed pure-Python distribution, from its RECORD (no network needed)."""
    d = metadata.distribution(dist)
    name = f"{d.metadata['Name'].replace('-', '_')}-{d.version}-py3-none-any.whl"
    with zipfile.ZipFile(out / name, "w") as z:
        for f in d.files:
            path = Path(d.locate_file(f))
            if path.is_file() and "__pycache__" not in f.parts:
                z.write(path, str(f))
    return out / name


def test_dry_run_stops_when_jax_triton_is_missing(tmp_path):
    """Without the wheel (and a python that lacks jax_triton) step 1 stops: exit 3, no figures."""
    shadow = tmp_path / "shadow" / "jax_triton"  # ahead of site-packages on PYTHONPATH
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no jax-triton on this machine')\n")
    empty = tmp_path / "wheels"
    empty.mkdir()
    out = tmp_path / "out"
    proc = run_script("--dry-run", env={"OUT": str(out), "PYTHON": sys.executable,
                                        "WHEEL_DIR": str(empty),
                                        "PYTHONPATH": str(shadow.parent)})  # fmt: skip
    assert proc.returncode == 3, proc.stdout[-2000:]
    assert "jax-triton" in (out / "env.txt").read_text()
    assert not (out / "targets").exists()


@pytest.mark.skipif(sys.version_info[:2] != (3, 12), reason="the dry run checks Python 3.12")
def test_dry_run_runs_every_step_with_the_carried_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    repack_installed_wheel("jax-triton", wheels)
    out = tmp_path / "out"
    proc = run_script("--dry-run", env={"OUT": str(out), "PYTHON": sys.executable,
                                        "WHEEL_DIR": str(wheels)})  # fmt: skip
    log = (out / "run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    env = (out / "env.txt").read_text()
    assert "python 3.12" in env and "jax_triton 0.4.1 from /tmp/compactlm_site" in env
    for name in ("environment", "bandwidth", "targets", "gpu tests", "other shapes"):
        assert f"== {name}" in log
    assert "measured bandwidth" in log and "skipped" in (out / "tests.log").read_text()
    rows = (out / "targets" / "bench_kernels.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 7  # header + (dense + 6 formats) x M in (1, 4)
    assert all(",reference," in r or ",xla," in r for r in rows[1:])  # impl_used, honestly
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # what a device run returns
