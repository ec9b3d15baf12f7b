"""Input noise (models/input_noise.py): NEFTune's bound, span masks, training-only in the model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.config import ConfigError, make_config
from compactlm.models.input_noise import (
    apply_input_noise,
    neftune_noise,
    span_mask,
    span_starts_to_mask,
)
from compactlm.models.transformer import ModelConfig, Transformer

SMALL = ModelConfig(
    vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.2
)


def test_neftune_noise_is_uniform_within_alpha_over_sqrt_td() -> None:
    B, T, D, alpha = 4, 64, 32, 10.0
    bound = alpha / np.sqrt(T * D)
    x = jax.random.normal(jax.random.key(1), (B, T, D))
    kw = dict(span_mask_rate=0.0, span_length=3)
    y = apply_input_noise(x, jax.random.key(2), neftune_alpha=alpha, **kw)
    noise = np.asarray(y - x, np.float64)
    assert np.abs(noise).max() <= bound * (1 + 1e-5)
    # U(-b, b) over 8192 draws: max |.| within 0.1% of b, mean 0, variance b²/3 (±5 sigma).
    assert np.abs(noise).max() > 0.999 * bound
    n = noise.size
    assert abs(noise.mean()) < 5 * bound / np.sqrt(3 * n)
    var_sigma = bound**2 * np.sqrt(4 / 45 / n)  # std of the sample variance of U(-b, b)
    assert abs(noise.var() - bound**2 / 3) < 5 * var_sigma
    # Deterministic in the key, different for another key.
    np.testing.assert_array_equal(
        y, apply_input_noise(x, jax.random.key(2), neftune_alpha=alpha, **kw)
    )
    assert not np.array_equal(y, apply_input_noise(x, jax.random.key(3), neftune_alpha=alpha, **kw))
    assert neftune_noise(jax.random.key(0), (2, 3, 4), 0.0).max() == 0.0


def _reference_spans(starts: np.ndarray, L: int) -> np.ndarray:
    """Slot s of starts masks positions s - L + 1 ... s (a span of L starting at s - L + 1)."""
    B, U = starts.shape
    T = U - L + 1
    out = np.zeros((B, T), bool)
    for b, s in zip(*np.nonzero(starts), strict=True):
        first = s - L + 1
        out[b, max(first, 0) : min(first + L, T)] = True
    return out


@pytest.mark.parametrize("L", [1, 3, 5])
def test_span_mask_is_spans_of_length_l_at_the_rate(L) -> None:
    starts = np.asarray(jax.random.bernoulli(jax.random.key(L), 0.1, (6, 40 + L - 1)))
    np.testing.assert_array_equal(
        span_starts_to_mask(jnp.asarray(starts), L), _reference_spans(starts, L)
    )
    rate, B, T = 0.15, 64, 256
    m = np.asarray(span_mask(jax.random.key(7), B, T, rate, L))
    assert m.shape == (B, T) and m.dtype == bool
    # Positions are correlated within a span: the variance of the mean is at most L times the
    # independent one, so 5·sqrt(L·p(1-p)/n) bounds the error.
    assert abs(m.mean() - rate) < 5 * np.sqrt(L * rate * (1 - rate) / m.size)
    # Same rate at the left edge as in the middle (starts before position 0 are drawn too).
    assert abs(m[:, :L].mean() - rate) < 5 * np.sqrt(rate * (1 - rate) / m[:, :L].size)
    # Every run of masked positions away from the edges is at least L long.
    for row in m:
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if a > 0 and b < T:
                assert b - a >= L


def _model(**kw) -> Transformer:
    return Transformer(dataclasses.replace(SMALL, **kw), rngs=nnx.Rngs(0))


def test_model_noise_only_with_rng_and_deterministic_in_it() -> None:
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
    clean = _model()(tokens)
    noisy = _model(neftune_alpha=15.0, span_mask_rate=0.2)
    # Same parameters (the noise adds none); rng=None (eval, generation): no noise at all.
    np.testing.assert_array_equal(noisy(tokens), clean)
    np.testing.assert_array_equal(_model()(tokens, rng=jax.random.key(5)), clean)  # off: no-op
    a = noisy(tokens, rng=jax.random.key(5))
    np.testing.assert_array_equal(a, noisy(tokens, rng=jax.random.key(5)))
    assert not np.allclose(a, clean) and not np.allclose(a, noisy(tokens, rng=jax.random.key(6)))


def test_fully_masked_inputs_carry_no_token_identity() -> None:
    # rate 0.999: with this key every one of the 2 x 8 inputs is masked (zero embedding), so two
    # different token sequences give the same training logits; without rng they differ.
    model = _model(span_mask_rate=0.999)
    t1 = jax.random.randint(jax.random.key(0), (2, 8), 0, 64)
    t2 = (t1 + 1) % 64
    key = jax.random.key(11)
    np.testing.assert_array_equal(model(t1, rng=key), model(t2, rng=key))
    assert not np.allclose(model(t1), model(t2))


def test_model_noise_config_errors_are_one_line() -> None:
    for override, match in [
        ("model.neftune_alpha=-1", "neftune_alpha must be >= 0"),
        ("model.span_mask_rate=1.0", r"span_mask_rate must be in \[0, 1\)"),
        ("model.span_length=0", "span_length must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=match) as e:
            make_config("nano", [override])
        assert "\n" not in str(e.value)


def test_untied_head_trains_with_an_rng() -> None:
    # The LM head's key is fold_in(rng, 2**32 - 1): fold_in takes uint32 data (-1 overflowed).
    model = _model(tie_embeddings=False, neftune_alpha=5.0)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 64)
    assert np.isfinite(model(tokens, rng=jax.random.key(1))).all()
