"""bench_train smoke test: sane fields and a FLOP count matching an independent calculation."""

import math
import time

from compactlm.benchmarks.bench_train import bench_train
from compactlm.config import make_config


def test_bench_train_nano_fields_and_flops(tmp_path) -> None:
    cfg = make_config("nano", ["mesh.devices=1"])
    out = tmp_path / "bench.json"
    t0 = time.perf_counter()
    r = bench_train(cfg, steps=2, warmup=1, out=out, peak_tflops=1.0, verbose=False)
    elapsed = time.perf_counter() - t0  # an independent clock around the whole call
    m, t = cfg.model, cfg.train
    D, L, N, K, F = m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff
    V, T = m.vocab_size, t.seq_len
    H = D // N
    # Per block: q and o (D·N·H each), k and v (D·K·H each), gate, up, down (D·F each); plus the
    # tied logit matmul V·D. Training: 6 FLOPs per matmul parameter per token (2 forward, 4
    # backward) + 12·L·N·H·T for QKᵀ and AV (PaLM appendix B).
    n_matmul = L * (2 * D * N * H + 2 * D * K * H + 3 * D * F) + V * D
    flops_per_token = 6 * n_matmul + 12 * L * N * H * T
    assert r["model_flops_per_token"] == flops_per_token
    assert r["step_ms_p10"] <= r["step_ms_median"] <= r["step_ms_p90"]
    # The timed steps (and the compile) happened inside the call: their seconds, from the
    # reported figures, fit in the outside clock; a unit slip (ms as s) or a step time taken
    # from elsewhere would not.
    step_s = t.batch_size * T / r["tokens_per_s"]  # seconds per step, back from tokens/s
    assert 0 < r["compile_s"] + 2 * step_s <= elapsed
    assert math.isclose(step_s, r["step_ms_median"] / 1e3, rel_tol=1e-9)
    # MFU from this test's FLOP count and the given peak (1 TFLOP/s), not the bench's fields.
    assert math.isclose(r["mfu"], flops_per_token * r["tokens_per_s"] / 1e12, rel_tol=1e-9)
    assert math.isfinite(r["final_loss"]) and r["peak_source"] == "given"
    # getrusage figures of the timed loop, per step (a step does run on the CPU here).
    assert 0 <= r["sys_s_per_step"] and 0 < r["user_s_per_step"]
    assert r["minor_faults_per_step"] >= 0 and r["allocator"] in ("system", "mimalloc", "tcmalloc")
    assert out.exists()
