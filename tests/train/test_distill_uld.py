"""ULD (train/distill_uld.py): its definition and closed form against NumPy, what it is as a
transport distance, permutation invariance, gradients; byte-offset alignment on hand-built
tokenizations; the packed batch; the objective's loss against the definition."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.data.tokenizer import ByteTokenizer
from compactlm.models.transformer import ModelConfig, Transformer
from compactlm.train.distill import DistillConfig
from compactlm.train.distill_uld import (
    UldLoss,
    WindowAligner,
    align_positions,
    make_objective,
    teacher_length,
    token_ends,
    uld_distance,
    unpack,
)
from tests.tolerances import tol
from tests.train.pieces import Pieces

ULD = DistillConfig(cross_tokenizer="uld", alpha=0.6, temperature=1.0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_uld(p, q):
    """The paper's closed form from its words: sort each decreasing, zero-pad the shorter."""
    n = max(len(p), len(q))
    ps = np.zeros(n)
    qs = np.zeros(n)
    ps[: len(p)] = np.sort(p)[::-1]
    qs[: len(q)] = np.sort(q)[::-1]
    return np.abs(ps - qs).sum()


def line_w1(a, b):
    """W1 of two distributions on ranks 0 … n−1 with unit spacing: Σ |CDF_a − CDF_b|."""
    return np.abs(np.cumsum(a) - np.cumsum(b)).sum()


def test_closed_form_matches_numpy_with_different_vocabularies():
    rng = np.random.default_rng(0)
    zt = rng.normal(size=(3, 5, 11)) * 3
    zs = rng.normal(size=(3, 5, 7)) * 3
    got = np.asarray(uld_distance(jnp.asarray(zt, jnp.float32), jnp.asarray(zs, jnp.float32)))
    p, q = softmax(zt), softmax(zs)
    want = np.array([[reference_uld(p[b, t], q[b, t]) for t in range(5)] for b in range(3)])
    np.testing.assert_allclose(got, want, **tol("f32_reorder"))
    assert (got >= 0).all() and (got <= 2 + 1e-6).all()


def test_what_the_closed_form_is_as_a_transport_distance():
    """ULD = min over bijections of the L1 distance (the sorted matching is optimal); = 2 × the
    W1 of the paper's construction (common ranks, cost 1 between different ranks: TV); and NOT
    the unit-spacing line W1 of the sorted vectors, which is >= ULD / 2, equal only when mass
    moves by one rank at most."""
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
        uld = reference_uld(p, q)
        best = min(np.abs(p - q[list(perm)]).sum() for perm in itertools.permutations(range(5)))
        np.testing.assert_allclose(uld, best, rtol=1e-12)
        ps, qs = np.sort(p)[::-1], np.sort(q)[::-1]
        np.testing.assert_allclose(uld, 2 * 0.5 * np.abs(ps - qs).sum(), rtol=1e-12)  # 2·TV
        assert line_w1(ps, qs) >= uld / 2 - 1e-12
    # one-rank moves: equality; a two-rank move: strict
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.25, 0.25])
    assert reference_uld(p, q) == 0.5 and line_w1(p, q) == 0.25
    p, q = np.array([1.0, 0.0, 0.0]), np.full(3, 1 / 3)
    np.testing.assert_allclose([reference_uld(p, q), line_w1(p, q)], [4 / 3, 1.0])


def test_invariant_to_permuting_either_vocabulary():
    rng = np.random.default_rng(2)
    zt = jnp.asarray(rng.normal(size=(4, 13)) * 2, jnp.float32)
    zs = jnp.asarray(rng.normal(size=(4, 9)) * 2, jnp.float32)
    base = np.asarray(uld_distance(zt, zs))
    perm_t, perm_s = rng.permutation(13), rng.permutation(9)
    # equal up to the softmax denominator, summed in the permuted order (1 ulp measured)
    permuted = np.asarray(uld_distance(zt[:, perm_t], zs[:, perm_s]))
    np.testing.assert_allclose(permuted, base, **tol("f32_reorder"))
    assert np.asarray(uld_distance(zt, zt[:, perm_t])).max() < 1e-6  # a relabelled copy: 0


def test_gradients_are_finite_including_ties_and_saturated_softmax():
    zs = jnp.asarray([[0.0, 0.0, 0.0, 5.0], [80.0, -80.0, 0.0, 0.0]], jnp.float32)
    zt = jnp.asarray([[1.0, 1.0, 2.0, 0.0, 0.0, -1.0], [0.0] * 6], jnp.float32)
    g = jax.grad(lambda s: uld_distance(zt, s).sum())(zs)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def test_alignment_pairs_equal_byte_offsets_on_hand_built_tokenizations():
    # text "def foo" : student bytes d e f ␠ f o o ; teacher "def" "␠f" "oo"
    s_ends = token_ends(np.arange(7), np.ones(7, np.int64))  # 1 … 7
    t_ends = np.array([3, 5, 7])
    # student position t has read bytes [0, t+1); teacher j has read [0, t_ends[j])
    np.testing.assert_array_equal(align_positions(s_ends, t_ends), [-1, -1, 0, -1, 1, -1, 2])
    # both BPE: student "de" "f ␠" "fo" "o", teacher "def" "␠f" "oo": only the end is shared
    np.testing.assert_array_equal(align_positions(np.array([2, 4, 6, 7]), t_ends), [-1, -1, -1, 2])


def test_window_aligner_re_tokenizes_and_pairs_eos():
    byte = ByteTokenizer()
    teacher = Pieces(["de", "f", " ", "x", "ab", "a", "b", "d", "e"])
    window = np.concatenate([byte.encode("def x"), [byte.eos_id], byte.encode("ab")])
    aligner = WindowAligner(byte, teacher, teacher_len=10)
    ids, align = aligner.window(window)
    # teacher: "de" "f" " " "x" <eos> "ab"  → ends 2 3 4 5 6 8 (eos is one unit)
    np.testing.assert_array_equal(ids, [0, 1, 2, 3, teacher.eos_id, 4, -1, -1, -1, -1])
    # student ends (bytes + eos as one unit): 1 2 3 4 5 6 7 | 8 (the last token: target only)
    np.testing.assert_array_equal(align, [-1, 0, 1, 2, 3, 4, -1])
    # the window cut inside a two-byte character: the partial byte is dropped, the rest aligns
    cut = byte.encode("é de")[1:]
    ids, align = WindowAligner(byte, teacher, teacher_len=8).window(cut)
    np.testing.assert_array_equal(ids[:3], [2, 0, -1])  # " " "de"
    np.testing.assert_array_equal(align, [-1, 0, -1])
    packed = WindowAligner(byte, teacher, 10).batch(np.stack([window, window]))
    tokens, t_ids, al = unpack(packed, seq_len=7, teacher_len=10)
    np.testing.assert_array_equal(tokens[1], window)
    np.testing.assert_array_equal(al[0], [-1, 0, 1, 2, 3, 4, -1])
    assert t_ids.shape == (2, 10)


def test_teacher_length_covers_the_window_and_respects_the_teacher_context():
    assert teacher_length(ByteTokenizer(), 128, 128) == 129
    assert teacher_length(ByteTokenizer(), 16, 128) == 18


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_objective_is_alpha_uld_plus_ce_at_aligned_positions(alpha):
    student_cfg = ModelConfig(
        vocab_size=259, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3
    )
    teacher_cfg = ModelConfig(
        vocab_size=12, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3
    )
    student, teacher = (
        Transformer(student_cfg, rngs=nnx.Rngs(0)),
        Transformer(teacher_cfg, rngs=nnx.Rngs(1)),
    )
    byte, t_tok = ByteTokenizer(), Pieces(["de", "f", " ", "x", "ab", "a", "b", "d", "e"])
    windows = np.stack([byte.encode("def xab"), byte.encode("ab de f")])
    packed = WindowAligner(byte, t_tok, 8).batch(windows)
    cfg = DistillConfig(cross_tokenizer="uld", alpha=alpha, temperature=1.0)
    t_graph, t_state = nnx.split(teacher)
    fn = make_objective(cfg, t_graph, seq_len=6, teacher_len=8)
    loss, metrics = fn(student, jnp.asarray(packed), jax.random.key(0), t_state)
    # reference: NumPy from the logits, by the definition
    tokens, t_ids, align = (np.asarray(x) for x in unpack(packed, 6, 8))
    zs = np.asarray(student(jnp.asarray(tokens[:, :-1])), np.float64)
    zt = np.asarray(teacher(jnp.asarray(np.maximum(t_ids[:, :-1], 0))), np.float64)
    pairs = [(b, t, j) for b in range(2) for t, j in enumerate(align[b]) if j >= 0]
    uld = np.mean([reference_uld(softmax(zt[b, j]), softmax(zs[b, t])) for b, t, j in pairs])
    logq = np.log(softmax(zs))
    ce = -np.mean(np.take_along_axis(logq, tokens[:, 1:, None], -1))
    np.testing.assert_allclose(float(metrics["distill/divergence"]), uld, **tol("f32_reorder"))
    np.testing.assert_allclose(float(metrics["distill/ce"]), ce, **tol("f32_reorder"))
    np.testing.assert_allclose(float(loss), alpha * uld + (1 - alpha) * ce, **tol("f32_reorder"))
    assert float(metrics["distill/aligned"]) == pytest.approx(len(pairs) / align.size)


def test_uld_config_refuses_what_needs_one_vocabulary():
    with pytest.raises(ValueError, match="top_k=8 is not supported"):
        DistillConfig(cross_tokenizer="uld", top_k=8)
    with pytest.raises(ValueError, match="on_policy=0.5 is not supported"):
        DistillConfig(cross_tokenizer="uld", on_policy=0.5)
    with pytest.raises(ValueError, match="needs distill.cross_tokenizer=uld"):
        UldLoss(DistillConfig())
