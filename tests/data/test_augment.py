"""data.augment: deletion, adjacent swap, insertion — determinism, rates, shapes, validation."""

import numpy as np
import pytest

from compactlm.config import ConfigError, make_config
from compactlm.data import DataConfig, DataError, get_batch
from compactlm.data.augment import augmented_batch
from compactlm.data.config import AUGMENTATIONS
from compactlm.data.dataset import batch_offsets

B, T = 32, 127  # windows of T + 1 = 128 tokens
FILL = 7


def _batch(tokens, names, rate, *, seed=0, step=0, ordinary=None):
    ordinary = np.arange(3, 50) if ordinary is None else ordinary
    return augmented_batch(
        tokens,
        names=tuple(names),
        rate=rate,
        ordinary_ids=ordinary,
        fill_id=FILL,
        seed=seed,
        step=step,
        batch_size=B,
        seq_len=T,
    )


def _within_binomial(hits: int, n: int, p: float) -> None:
    """|hits/n - p| within 5 binomial standard deviations (fails by chance < 1e-6)."""
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) < 5 * sigma, (hits / n, p, sigma)


@pytest.fixture(scope="module")
def corpus():
    # Distinct, increasing ids (>= 1000, so they never collide with insertable ids 3..49): every
    # deletion, swap and insertion is visible in the output.
    return np.arange(1000, 1000 + 400_000, dtype=np.uint32)


@pytest.mark.parametrize("names", [[n] for n in AUGMENTATIONS] + [list(AUGMENTATIONS)])
def test_deterministic_in_seed_and_step_with_shape_and_dtype(corpus, names) -> None:
    a = _batch(corpus, names, 0.1, seed=3, step=5)
    assert a.shape == (B, T + 1) and a.dtype == np.int32
    np.testing.assert_array_equal(a, _batch(corpus, names, 0.1, seed=3, step=5))
    assert not np.array_equal(a, _batch(corpus, names, 0.1, seed=3, step=6))
    assert not np.array_equal(a, _batch(corpus, names, 0.1, seed=4, step=5))
    # Rate 0: the windows of get_batch, bit for bit (same starts, nothing changed).
    plain = get_batch(corpus, seed=3, step=5, batch_size=B, seq_len=T)
    np.testing.assert_array_equal(_batch(corpus, names, 0.0, seed=3, step=5), plain)
    assert not np.array_equal(a, plain)


def test_dropout_deletes_at_the_rate_and_refills_from_the_right(corpus) -> None:
    rate, deleted, seen = 0.2, 0, 0
    for step in range(4):
        out = _batch(corpus, ["dropout"], rate, step=step).astype(np.int64)
        starts = batch_offsets(corpus.size, seed=0, step=step, batch_size=B, seq_len=T) + 1000
        assert (np.diff(out, axis=1) > 0).all()  # an in-order subsequence of the corpus...
        assert (out[:, 0] >= starts).all()  # ...of the window that get_batch starts
        span = out[:, -1] - starts + 1  # corpus tokens examined up to the last kept one
        deleted += int((span - (T + 1)).sum())
        seen += int(span.sum()) - B  # the last kept token was decided "keep" by construction
    _within_binomial(deleted, seen, rate)


def test_swap_starts_at_rate_times_one_minus_rate(corpus) -> None:
    rate = 0.25
    out = _batch(corpus, ["swap"], rate, step=1).astype(np.int64)
    window = get_batch(corpus, seed=0, step=1, batch_size=B, seq_len=T).astype(np.int64)
    np.testing.assert_array_equal(np.sort(out, axis=1), window)  # a permutation of the window
    moved = out != window
    # Only disjoint adjacent transpositions: a moved token moved by exactly one place.
    assert (np.abs(out - window)[moved] == 1).all()
    start = (out[:, :-1] - window[:, :-1]) == 1  # position i took i+1's token: a swap starts
    assert not (start[:, 1:] & start[:, :-1]).any()  # never overlapping
    # Position 0 has no left neighbour (P = rate); positions 1..T-1: rate·(1 - rate).
    _within_binomial(int(start[:, 1:].sum()), start[:, 1:].size, rate * (1 - rate))


def test_insert_adds_ordinary_ids_at_the_rate(corpus) -> None:
    rate, ordinary = 0.15, np.array([3, 4, 5, 9, 20, 49])
    inserted, originals = 0, 0
    for step in range(8):  # ~29k originals: 5 sigma = 0.011, a 10% rate error (0.015) fails
        out = _batch(corpus, ["insert"], rate, step=step, ordinary=ordinary).astype(np.int64)
        window = get_batch(corpus, seed=0, step=step, batch_size=B, seq_len=T)
        is_orig = out >= 1000
        assert set(np.unique(out[~is_orig])) <= set(ordinary.tolist())  # never a special
        for row, orig_mask, w in zip(out, is_orig, window, strict=True):
            kept = row[orig_mask]
            np.testing.assert_array_equal(kept, w[: kept.size])  # originals in order, cut at T+1
            last = np.flatnonzero(orig_mask)[-1]
            # Insertions before each original that made it in: Binomial(#originals, rate).
            inserted += int((~orig_mask[:last]).sum())
            originals += kept.size
    _within_binomial(inserted, originals, rate)
    # Every insertable id shows up (uniform over the 6 ordinary ids, ~600 draws in the last batch).
    assert set(np.unique(out[out < 1000])) == set(ordinary.tolist())


def test_dropout_at_the_corpus_end_pads_with_the_fill_id() -> None:
    tokens = np.arange(1000, 1000 + T + 2, dtype=np.uint16)  # one possible start or two
    out = _batch(tokens, ["dropout"], 0.5)
    assert out.shape == (B, T + 1)
    assert (out[:, -1] == FILL).all()  # ~T/2 tokens survive; the rest of the row is fill


def test_config_validation_is_one_line() -> None:
    assert DataConfig(augment=("none",)).augment == ()
    with pytest.raises(DataError, match="valid: none, dropout, swap, insert"):
        DataConfig(augment=("shuffle",))
    with pytest.raises(DataError, match="model.span_mask_rate"):
        DataConfig(augment=("span_mask",))
    with pytest.raises(DataError, match="model.neftune_alpha"):
        DataConfig(augment=("neftune",))
    with pytest.raises(DataError, match="twice"):
        DataConfig(augment=("swap", "swap"))
    with pytest.raises(DataError, match=r"\[0, 1\)"):
        DataConfig(augment=("swap",), augment_rate=1.0)
    cfg = make_config("nano", ["data.augment=dropout,swap", "data.augment_rate=0.05"])
    assert cfg.data.augment == ("dropout", "swap") and cfg.data.augment_rate == 0.05
    assert make_config("nano", ["data.augment=none"]).data.augment == ()
    with pytest.raises(ConfigError) as e:
        make_config("nano", ["data.augment=dropout,shuffle"])
    assert "\n" not in str(e.value) and "valid: none, dropout" in str(e.value)


def test_the_augment_sweep_file_plans_valid_configs() -> None:
    """configs/sweeps/augment.py (the docs/adapters.md table) loads and every row is valid."""
    from compactlm.experiments import sweep as sweeps

    name, spec = sweeps.load("augment")
    cfgs = [make_config("nano", [*spec.common, *row.overrides]) for row in spec.rows]
    assert cfgs[0].data.augment == () and cfgs[0].model.neftune_alpha == 0
    assert {c.data.augment for c in cfgs[1:4]} == {(n,) for n in AUGMENTATIONS}
    assert len(sweeps.dry_run_lines(name, spec)) == len(spec.rows) * spec.seeds
