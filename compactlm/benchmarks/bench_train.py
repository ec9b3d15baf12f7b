"""`compactlm bench train`: steady-state training tokens/s and model-FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s (PaLM, Chowdhery et al. 2022, appendix B). Model FLOPs
per token come from `models.footprint.flops_per_token` (6N + 12·L·N·H·T: Kaplan et al. 2020 table
1, PaLM appendix B), so recomputation (remat) and the optimizer do not count as useful work.
The peak is stated with its source: a spec table for accelerators, and on CPU a peak measured in
the same run (a large f32 `jnp.dot`), because CPU spec sheets say nothing about what XLA reaches.

Timing: the step is compiled ahead of time (`lower().compile()`, reported as compile time), run
`warmup` times, then `steps` times with `block_until_ready` after each; step time is the median,
spread the 10th–90th percentiles. Batches are random tokens already on the device, so host data
generation is excluded (the loop overlaps it with the running step anyway).

Beside the wall time, the timed loop's process CPU time (user and system, all threads) and page
faults per step come from `getrusage`: on a shared machine CPU time per step is steadier than wall
time, and system time / minor faults show allocator regressions (glibc re-faulting XLA's
temporary buffer every step: compactlm/allocator.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from compactlm.config import Config

# Dense spec peaks in TFLOP/s by (device-kind substring, compute dtype). H100/H200 SXM: 989 bf16
# dense tensor-core, 67 f32 (non-tensor-core FP32; JAX's default f32 matmul precision on GPU may
# use TF32, which would make f32 MFU look > 100% only if the model were matmul-bound at 494).
GPU_PEAKS_TFLOPS: dict[tuple[str, str], float] = {
    ("H200", "bfloat16"): 989.0,
    ("H200", "float32"): 67.0,
    ("H100", "bfloat16"): 989.0,
    ("H100", "float32"): 67.0,
    ("A100", "bfloat16"): 312.0,
    ("A100", "float32"): 19.5,
}


def measure_matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` TFLOP/s of a jitted [n, n] @ [n, n] dot on the default device."""
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), jnp.dtype(dtype))
    dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def device_peak(compute_dtype: str) -> tuple[float, str]:
    """(peak TFLOP/s, where the number comes from) for device 0 at `compute_dtype`."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        peak = measure_matmul_peak(compute_dtype)
        return peak, f"measured {compute_dtype} matmul peak (jnp.dot 2048^3, this run)"
    for (kind, dtype), peak in GPU_PEAKS_TFLOPS.items():
        if kind in dev.device_kind and dtype == compute_dtype:
            return peak, f"spec dense {compute_dtype} peak of {kind}"
    peak = measure_matmul_peak(compute_dtype, n=8192)
    return peak, f"measured {compute_dtype} matmul peak on {dev.device_kind} (no spec entry)"


def _random_batches(cfg: Config, program: Any, n: int) -> list[jax.Array]:
    from compactlm.train.mesh import shard_batch

    t = cfg.train
    rng = np.random.default_rng(t.seed)
    shape = (t.grad_accum, t.batch_size // t.grad_accum, t.seq_len + 1)
    sharding = jax.sharding.NamedSharding(
        program.mesh, jax.sharding.PartitionSpec(None, *program.batch_sharding.spec)
    )
    return [
        shard_batch(rng.integers(0, cfg.model.vocab_size, shape, dtype=np.int32), sharding)
        for _ in range(n)
    ]


def bench_train(
    cfg: Config,
    *,
    steps: int = 20,
    warmup: int = 3,
    out: str | Path | None = None,
    peak_tflops: float | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Compile, warm up and time `steps` train steps of `cfg`; print and return the figures.

    peak_tflops: override the device peak (else `device_peak`). out: also write the dict as JSON.
    """
    from compactlm.models.footprint import count_params, flops_per_token
    from compactlm.train.program import make_program
    from compactlm.train.step import init_state

    t = cfg.train
    t0 = time.perf_counter()
    program = make_program(cfg)  # exactly the Trainer's program (optimizer, what trains)
    mesh = program.mesh
    state = init_state(program, cfg.model, seed=t.seed)
    batches = _random_batches(cfg, program, 2)
    lowered = program.train_step.lower(state, batches[0], None)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0

    for i in range(warmup):
        state, metrics = compiled(state, batches[i % 2], None)
    jax.block_until_ready((state, metrics))
    times = []
    usage0 = _rusage()
    for i in range(steps):
        s0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2], None)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - s0)
    usage = {k: (v - usage0[k]) / steps for k, v in _rusage().items()}
    loss = float(metrics["loss"])

    if peak_tflops is None:
        peak_tflops, peak_source = device_peak(cfg.model.compute_dtype)
    else:
        peak_source = "given"
    tokens_per_step = t.batch_size * t.seq_len
    step_s = float(np.median(times))
    fpt = flops_per_token(cfg.model, t.seq_len)
    tokens_per_s = tokens_per_step / step_s
    achieved = fpt["train"] * tokens_per_s / 1e12
    dev = jax.devices()[0]
    result = {
        "preset": cfg.preset,
        "device": f"{dev.platform}:{dev.device_kind}",
        "n_devices": mesh.size,
        "jax": jax.__version__,
        "batch_size": t.batch_size,
        "seq_len": t.seq_len,
        "compute_dtype": cfg.model.compute_dtype,
        "params": count_params(cfg.model)["total"],
        "steps": steps,
        "warmup": warmup,
        "compile_s": compile_s,
        "step_ms_median": step_s * 1e3,
        "step_ms_p10": float(np.percentile(times, 10)) * 1e3,
        "step_ms_p90": float(np.percentile(times, 90)) * 1e3,
        "tokens_per_s": tokens_per_s,
        "model_flops_per_token": fpt["train"],
        "xla_flops_per_token": xla_flops / tokens_per_step,
        "achieved_tflops": achieved,
        "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "mfu": achieved / peak_tflops,
        "final_loss": loss,
        # Per timed step, whole process (every thread): CPU seconds and page faults.
        "user_s_per_step": usage["user_s"],
        "sys_s_per_step": usage["sys_s"],
        "minor_faults_per_step": usage["minor_faults"],
        "major_faults_per_step": usage["major_faults"],
        "allocator": allocator_name(),
    }
    if verbose:
        print(format_result(result))
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _rusage() -> dict[str, float]:
    """This process's CPU seconds and page faults so far (zeros where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return dict.fromkeys(("user_s", "sys_s", "minor_faults", "major_faults"), 0.0)
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "user_s": r.ru_utime,
        "sys_s": r.ru_stime,
        "minor_faults": float(r.ru_minflt),
        "major_faults": float(r.ru_majflt),
    }


def allocator_name() -> str:
    from compactlm.allocator import loaded

    return loaded()[0]


def format_result(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"bench train {r['preset']}: {r['params'] / 1e6:.3f}M params, B{r['batch_size']} x "
            f"T{r['seq_len']}, {r['compute_dtype']}, {r['device']} x{r['n_devices']}, "
            f"jax {r['jax']}",
            f"  compile       {r['compile_s']:.1f} s (build + init + lower + compile)",
            f"  step          {r['step_ms_median']:.1f} ms median  (p10 {r['step_ms_p10']:.1f}, "
            f"p90 {r['step_ms_p90']:.1f}; {r['steps']} steps after {r['warmup']} warm-up)",
            f"  tokens/s      {r['tokens_per_s']:,.0f}",
            f"  CPU / step    {1e3 * r['user_s_per_step']:.0f} ms user + "
            f"{1e3 * r['sys_s_per_step']:.0f} ms system (all threads), "
            f"{r['minor_faults_per_step']:,.0f} page faults; allocator {r['allocator']}",
            f"  model FLOPs   {r['model_flops_per_token'] / 1e6:.2f} MFLOP/token (6N + 12LNHT; "
            f"XLA cost analysis {r['xla_flops_per_token'] / 1e6:.2f}, which counts a scanned "
            "layer loop once and the blocked attention's skipped blocks not at all)",
            f"  achieved      {r['achieved_tflops']:.4f} TFLOP/s",
            f"  peak          {r['peak_tflops']:.3f} TFLOP/s ({r['peak_source']})",
            f"  MFU           {100 * r['mfu']:.1f}%",
        ]
    )
