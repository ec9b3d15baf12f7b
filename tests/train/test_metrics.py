"""metrics.jsonl: records round-trip, a line cut by a crash is skipped and never glued to the
next record, and every metric a run logs is named split/name."""

import json
import re

from compactlm.config import make_config
from compactlm.train.loop import load_metrics, run
from compactlm.train.metrics import MetricsWriter, Progress


def test_records_round_trip_in_order(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    records = [{"step": s, "train/loss": 1.0 / s} for s in (1, 2, 3)]
    for r in records:
        writer.write(r)
    writer.close()
    writer.close()  # idempotent: the loop closes it on errors too
    assert load_metrics(tmp_path) == records


def test_a_line_cut_by_a_crash_is_skipped_and_the_next_record_starts_a_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tra')
    writer = MetricsWriter(tmp_path, tensorboard=False)  # the resumed run appends
    writer.write({"step": 2, "train/loss": 1.5})
    writer.close()
    assert load_metrics(tmp_path) == [
        {"step": 1, "train/loss": 2.0},
        {"step": 2, "train/loss": 1.5},
    ]


def test_tensorboard_events_are_written(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=True)
    writer.write({"step": 1, "train/loss": 2.0, "note": "not a scalar"})
    writer.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_progress_disabled_is_silent(capsys):
    bar = Progress(total=10, enabled=False)
    bar.update_to(3, loss=1.0, tps=100.0)
    bar.close()
    assert capsys.readouterr().err == ""


def test_every_logged_metric_is_split_slash_name(tmp_path):
    cfg = make_config(
        "nano",
        [
            "train.steps=2",
            "train.log_every=1",
            "train.eval_every=1",
            "train.eval_tokens=2048",
            "train.checkpoint_every=0",
            "train.progress=false",
            "train.tensorboard=false",
            "data.corpus=pydocs",
            "mesh.devices=1",
        ],
    )
    run(cfg, tmp_path)
    records = load_metrics(tmp_path)
    keys = {k for r in records for k in r} - {"step"}
    # "tokens/s" reads as split/name too (a unit, kept for the finetune report).
    assert all(re.fullmatch(r"[a-z]+/[a-z_0-9/]+|tokens/s", k) for k in keys), sorted(keys)
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss", "eval/bpb"} <= keys
    train = [r for r in records if "train/lr" in r]
    assert [r["step"] for r in train] == [1, 2]
    # Step 1 uses the schedule's value at 0 (warmup starts from 0); later ones stay <= the peak.
    assert train[0]["train/lr"] == 0 and 0 < train[1]["train/lr"] <= 3e-3 * (1 + 1e-6)
    assert all(r["train/grad_norm"] > 0 for r in train)
    json.dumps(records)
