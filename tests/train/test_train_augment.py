"""Augmentation in the training loop: train batches change, evaluation does not (nano)."""

import math

import numpy as np

from compactlm.config import make_config
from compactlm.train.loop import Trainer, load_metrics

BASE = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.steps=2",
    "train.log_every=1",
    "data.max_corpus_bytes=400000",
]
AUGMENT = [
    "data.augment=dropout,swap,insert",
    "data.augment_rate=0.1",
    "model.neftune_alpha=5",
    "model.span_mask_rate=0.15",
]


def test_augmentation_changes_train_batches_only(tmp_path) -> None:
    plain = Trainer(make_config("nano", BASE), tmp_path / "plain")
    noisy = Trainer(make_config("nano", [*BASE, *AUGMENT]), tmp_path / "noisy")
    plain.restore_or_init()
    noisy.restore_or_init()
    # Evaluation: same parameters (augmentation adds none), no rng, validation tokens read
    # directly: the numbers are identical, not merely close.
    assert noisy.evaluate(max_tokens=4096) == plain.evaluate(max_tokens=4096)
    for step in (0, 7):
        b = np.asarray(noisy.batch(step))
        assert b.shape == np.asarray(plain.batch(step)).shape and b.dtype == np.int32
        np.testing.assert_array_equal(b, np.asarray(noisy.batch(step)))  # pure in (seed, step)
        assert not np.array_equal(b, np.asarray(plain.batch(step)))
    summary = noisy.train()
    assert summary["step"] == 2
    losses = [m["train/loss"] for m in load_metrics(noisy.workdir) if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
