"""The model picker: predicted bytes against `info` and the definitions, the join, the front."""

import dataclasses
import json

import pytest

from compactlm.experiments.pick import (
    PickConfig,
    candidates,
    pareto_front,
    parse_bytes,
    pick,
    recommend,
    resolved_model,
)
from compactlm.experiments.report import _human, info_rows
from compactlm.models.footprint import count_params
from tests.commandline import cli as _cli


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1.5 KiB") == 1536 and parse_bytes("12") == 12
    for bad in ("lots", "2 parsecs", "GiB"):
        with pytest.raises(ValueError, match="use a number with"):
            parse_bytes(bad)


INFO_LABELS = {
    "float32": "weights f32",
    "bfloat16": "weights bf16",
    "int4": "weights int4 (g64)",
    "sparse24": "weights 2:4 (float32 values)",
    "sparse24_int4": "weights int4+2:4",
}


def test_predicted_bytes_match_info_and_the_definitions(tmp_path):
    import dataclasses

    from compactlm.config import make_config
    from compactlm.models.footprint import WEIGHT_VARIANTS, weight_bytes

    cfg = PickConfig(device="h100", runs=str(tmp_path))
    rows = candidates(cfg, bandwidth=3.35e12)
    for preset in ("nano", "tiny", "small", "base"):
        info = info_rows(make_config(preset))
        model = resolved_model(preset)
        counts = count_params(model)
        other = counts["total"] - counts["linear"]
        mine = {r["format"]: r for r in rows if r["preset"] == preset}
        assert set(mine) == set(WEIGHT_VARIANTS)
        # By hand from DESIGN §3, every preset being f32 with quant_group_size 64: dense f32 /
        # bf16 are 4 / 2 bytes a weight; int4 is 4 bits + an f32 scale per 64 rows, the rest f32.
        assert model.param_dtype == "float32" and model.quant_group_size == 64
        assert mine["float32"]["weights"] == 4 * counts["total"]
        assert mine["bfloat16"]["weights"] == 2 * counts["total"]
        assert mine["int4"]["weights"] == counts["linear"] * (4 + 32 / 64) / 8 + 4 * other
        for fmt in WEIGHT_VARIANTS[2:]:  # the one storage-cost formula (tests/models/)
            stored = dataclasses.replace(model, weight_format=fmt)
            assert mine[fmt]["weights"] == weight_bytes(stored)["total"], (preset, fmt)
        for fmt, label in INFO_LABELS.items():
            assert _human(mine[fmt]["weights"]) == info[label], (preset, fmt)
        # KV cache at the preset's max context, B = 1: info's row; by definition 2·L·T·K·H·2 B.
        kv = 2 * model.n_layers * model.max_seq_len * model.n_kv_heads * model.resolved_head_dim
        assert mine["bfloat16"]["kv_cache"] == 2 * kv
        assert _human(mine["bfloat16"]["kv_cache"]) == info["KV cache bf16 (B=1, T=max)"]
        # Decode latency: (weights + KV) bytes over the bandwidth.
        r = mine["int4"]
        assert r["decode_ms"] == pytest.approx((r["weights"] + r["kv_cache"]) / 3.35e12 * 1e3)


def _row(preset, fmt, total, quality, params=1):
    return {"preset": preset, "format": fmt, "total": total, "quality": quality, "params": params,
            "source": "x", "quality_approx": False}  # fmt: skip


def test_front_and_recommendation():
    rows = [
        _row("a", "int4", 10, 3.0),
        _row("a", "bfloat16", 30, 2.9),
        _row("b", "int4", 20, 2.5),  # dominates a/bfloat16
        _row("b", "bfloat16", 50, 2.4),
        _row("c", "int4", 60, None, params=9),
    ]
    front = pareto_front(rows)
    assert [(r["preset"], r["format"]) for r in front] == [
        ("a", "int4"), ("b", "int4"), ("b", "bfloat16")
    ]  # fmt: skip
    best, why = recommend(rows, "bpb")
    assert (best["preset"], best["format"]) == ("b", "bfloat16")
    assert "lowest measured bpb" in why and "no run measured them" in why
    best, why = recommend([_row("c", "int4", 6, None, 9), _row("c", "bfloat16", 9, None, 9),
                           _row("a", "bfloat16", 3, None, 2)], "bpb")  # fmt: skip
    assert (best["preset"], best["format"]) == ("c", "bfloat16") and "no run measured" in why
    assert recommend([], "bpb") == (None, "nothing fits the budget")


def test_measured_quality_joins_runs_by_shape_and_format(tmp_path):
    from compactlm.config import make_config, to_dict
    from compactlm.train.loop import resolve_vocab

    # Two nano-shaped runs scored on the whole split: the better one is used; a third scored a
    # prefix only (fewer tokens) and is not comparable, even though its number is lower.
    for name, bpb, tokens in (("a", 2.6, 1000), ("b", 2.4, 1000), ("c", 1.9, 500)):
        run = tmp_path / "sweeps" / "s" / name / "seed0"
        run.mkdir(parents=True)
        (run / "config.json").write_text(
            json.dumps(to_dict(resolve_vocab(make_config("nano"), 259)))
        )
        (run / "eval.json").write_text(json.dumps({"bpb": bpb, "tokens": tokens}))
    # A quantize output: compression.json's "after" evaluation, the format from its config.
    packed = tmp_path / "q"
    packed.mkdir()
    model_cfg = make_config("nano", ["model.weight_format=int4"])
    (packed / "config.json").write_text(json.dumps(to_dict(resolve_vocab(model_cfg, 259))))
    (packed / "compression.json").write_text(json.dumps({"after": {"bpb": 2.45, "tokens": 1000}}))
    cfg = PickConfig(memory="1MiB", device="h200", presets=("nano", "tiny"), runs=str(tmp_path))
    rows = {(r["preset"], r["format"]): r for r in candidates(cfg, bandwidth=4.8e12)}
    assert rows["nano", "float32"]["quality"] == 2.4 and "/b/" in rows["nano", "float32"]["source"]
    assert rows["nano", "bfloat16"]["quality_approx"] and rows["nano", "int4"]["quality"] == 2.45
    assert rows["nano", "nf4"]["quality"] is None
    assert rows["tiny", "float32"]["quality"] is None
    text = pick(cfg)
    assert "Recommended: nano in bfloat16" in text and "~2.4000" in text


def test_pick_cli(tmp_path, capsys):
    args = ["pick", "memory=3MiB", "device=h100", "presets=nano,tiny", f"runs={tmp_path}"]
    assert _cli(*args, "latency_ms=0.00023", f"out={tmp_path}", "--plot") == 0
    out = capsys.readouterr().out
    # 3 MiB admits tiny up to int4; 0.23 µs/token at 3.35 TB/s only its int4+2:4 (476.5 KiB of
    # weights + 256 KiB of KV cache = 750,080 B moved: 0.224 µs; nf4's 836,403 B: 0.250 µs).
    assert "Recommended: tiny in sparse24_int4" in out and (tmp_path / "pick.png").exists()
    assert _cli("pick", "memory=lots") == 2
    err = capsys.readouterr().err
    assert "use a number with" in err and "Traceback" not in err
    assert _cli("pick", "formats=int3") == 2
    assert "unknown formats ['int3']" in capsys.readouterr().err


def _nano_run(path, overrides=(), **files):
    from compactlm.config import make_config, to_dict
    from compactlm.train.loop import resolve_vocab

    path.mkdir(parents=True)
    cfg = resolve_vocab(make_config("nano", list(overrides)), 259)
    (path / "config.json").write_text(json.dumps(to_dict(cfg)))
    for name, content in files.items():
        (path / name.replace("_json", ".json")).write_text(json.dumps(content))
    return path


def test_distilled_runs_count_with_their_student_section(tmp_path):
    """A distilled run's eval.json holds a section per model (teacher, student): the student is
    the run's model; the teacher's (better) number must not be credited to the student's shape."""
    student = {"loss": 1.7, "bpb": 2.3, "tokens": 1000, "params": 1}
    teacher = {"loss": 1.2, "bpb": 1.9, "tokens": 1000, "params": 2}
    run = _nano_run(
        tmp_path / "distilled",
        distill_json={"teacher": "elsewhere"},
        eval_json={"teacher": teacher, "student": student},
    )
    cfg = PickConfig(memory="1MiB", device="h100", presets=("nano",), runs=str(tmp_path))
    rows = {r["format"]: r for r in candidates(cfg, bandwidth=3.35e12)}
    assert rows["float32"]["quality"] == student["bpb"]
    assert rows["float32"]["source"] == str(run)


def test_measured_decode_replaces_the_floor_and_the_floor_is_labelled(tmp_path):
    """`bench decode`'s bench_decode.json (same device, same batch) gives a measured latency:
    1000 × batch / tokens_per_s ms per step; without one, the bandwidth floor is printed as a
    lower bound, never as a prediction."""
    run = _nano_run(tmp_path / "nano")
    rows = [
        {"run": str(run), "format": "dense", "batch": 1, "tokens_per_s": 250.0},
        {"run": str(run), "format": "dense", "batch": 16, "tokens_per_s": 3200.0},
    ]
    _nano_run(
        tmp_path / "int4",
        ["model.weight_format=int4"],
        bench_decode_json={"device": "h100", "device_kind": "NVIDIA H100", "rows": rows},
    )
    other = [{"run": str(run), "format": "dense", "batch": 1, "tokens_per_s": 1e6}]
    (run / "bench_decode.json").write_text(json.dumps({"device": "cpu", "rows": other}))
    cfg = PickConfig(memory="1MiB", device="h100", presets=("nano",), runs=str(tmp_path))
    found = {r["format"]: r for r in candidates(cfg, bandwidth=3.35e12)}
    assert found["float32"]["decode_ms"] == pytest.approx(1e3 / 250.0)  # the cpu row ignored
    r = found["int4"]
    assert r["decode_source"] is None
    assert r["decode_ms"] == pytest.approx((r["weights"] + r["kv_cache"]) / 3.35e12 * 1e3)
    at16 = {r["format"]: r for r in candidates(dataclasses.replace(cfg, batch=16), 3.35e12)}
    assert at16["float32"]["decode_ms"] == pytest.approx(1e3 * 16 / 3200.0)
    text = pick(cfg)
    table_rows = {line.split(" | ")[1]: line for line in text.splitlines() if "| nano |" in line}
    assert "| 4 measured | 250 |" in table_rows["float32"]
    floor = found["int4"]["decode_ms"]
    assert f"| ≥ {floor:.2g} floor | ≤ {1e3 / floor:,.0f} |" in table_rows["int4"]
    assert "an estimate, not a prediction" in text
    assert f"Measured decode from: {tmp_path / 'int4' / 'bench_decode.json'} (NVIDIA H100)" in text
