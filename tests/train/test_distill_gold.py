"""GOLD (train/distill_gold.py) against a NumPy reference written here from its definition: a
2-student-tokens-vs-1-teacher-token group worked by hand, identical tokenizers reducing to the
plain divergence, random models in both directions with TRL's byte-offset walk as the reference
alignment; the vocabulary map on hand-built and real vocabularies; the CLI both ways (byte
student from a BPE teacher, BPE student from a byte teacher); bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from compactlm.data.tokenizer import BpeTokenizer, ByteTokenizer
from compactlm.models.transformer import ModelConfig, Transformer
from compactlm.train.distill import DistillConfig, DistillLoss
from compactlm.train.distill_gold import (
    GoldLoss,
    GroupAligner,
    make_objective,
    match_vocabularies,
    unpack,
    vocabulary_map,
)
from compactlm.train.loop import load_metrics
from tests.commandline import cli as main
from tests.tolerances import tol
from tests.train.pieces import Pieces

# ---------------------------------------------------------------------------------------------
# NumPy reference, from the definition (TRL ULDLoss: byte-offset groups, "bayesian" merge,
# hybrid loss with a string vocabulary map)
# ---------------------------------------------------------------------------------------------


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_groups(s_ends, t_ends):
    """TRL `_align_by_byte_offsets`: advance the side whose token ends earlier; close a group when
    both end at the same byte. Returns only closed groups (lists of token indices)."""
    groups, s, t, s0, t0 = [], 0, 0, 0, 0
    while s < len(s_ends) and t < len(t_ends):
        if s_ends[s] < t_ends[t]:
            s += 1
        elif s_ends[s] > t_ends[t]:
            t += 1
        else:
            s, t = s + 1, t + 1
            groups.append((list(range(s0, s)), list(range(t0, t))))
            s0, t0 = s, t
    return groups


def reference_merge(probs, tokens, group):
    """Chain rule: Π P(actual earlier tokens) × the full distribution predicting the last one
    (probs[k] is the distribution that predicts tokens[k])."""
    scale = np.prod([probs[k][tokens[k]] for k in group[:-1]])
    return scale * probs[group[-1]]


def reference_jsd(p, q, beta):
    m = beta * p + (1 - beta) * q
    kl = lambda a: np.sum(np.where(a > 0, a * np.log(np.where(a > 0, a, 1) / m), 0.0))  # noqa: E731
    return beta * kl(p) + (1 - beta) * kl(q)


def reference_sorted_l1(p, q):
    n = max(len(p), len(q))
    ps, qs = np.zeros(n), np.zeros(n)
    ps[: len(p)], qs[: len(q)] = np.sort(p)[::-1], np.sort(q)[::-1]
    return np.abs(ps - qs).sum()


def reference_hybrid(P_t, P_s, t_strings, s_strings, beta, weights=None):
    """Matched columns (same string, first id on each side) by JSD, the rest by sorted L1."""
    s_index = {}
    for i, s in enumerate(s_strings):
        s_index.setdefault(s, i)
    pairs, seen = [], set()
    for u, s in enumerate(t_strings):
        if s in s_index and s not in seen:
            seen.add(s)
            pairs.append((u, s_index[s]))
    t_m = [u for u, _ in pairs]
    s_m = [v for _, v in pairs]
    t_u = [u for u in range(len(P_t)) if u not in t_m]
    s_u = [v for v in range(len(P_s)) if v not in s_m]
    matched = reference_jsd(P_t[t_m], P_s[s_m], beta)
    unmatched = reference_sorted_l1(P_t[t_u], P_s[s_u]) if t_u and s_u else 0.0
    w_m, w_u = weights or (len(t_m) / len(P_t), 1 - len(t_m) / len(P_t))
    return w_m * matched + w_u * unmatched


def strings(tok):
    """TRL's vocab strings: the eos is "<eos>" on both sides, other specials their own names."""
    named = {tok.eos_id: b"<eos>"}
    return [p or named.get(i, b"<special %d>" % i) for i, p in enumerate(tok.token_bytes())]


# ---------------------------------------------------------------------------------------------


def test_vocabulary_map_on_hand_built_vocabularies():
    student = [b"a", b"b", b"ab", b"c", b""]  # eos = 4
    teacher = [b"ab", b"x", b"a", b"b", b"a", b"", b""]  # a twice (first kept), eos = 5, pad 6
    s_ids, t_ids = match_vocabularies(student, teacher, 4, 5)
    np.testing.assert_array_equal(t_ids, [0, 2, 3, 5])
    np.testing.assert_array_equal(s_ids, [2, 0, 1, 4])
    # real vocabularies: byte ↔ a trained BPE share exactly the 256 single bytes and the eos
    byte = ByteTokenizer()
    bpe = BpeTokenizer.train(["def foo(x):\n    return x + 1\n"] * 50, vocab_size=300)
    for s_tok, t_tok in ((byte, bpe), (bpe, byte)):
        s_ids, t_ids = vocabulary_map(s_tok, t_tok)
        assert len(s_ids) == 257
        sb, tb = s_tok.token_bytes(), t_tok.token_bytes()
        assert all(sb[v] == tb[u] for v, u in zip(s_ids, t_ids, strict=True) if sb[v])
        assert (s_tok.eos_id, t_tok.eos_id) in set(zip(s_ids, t_ids, strict=True))


def test_two_student_tokens_against_one_teacher_token_by_hand():
    """Text "b"+"ab"+"a". Student "b" "a" "b" "a" (vocab a b ba), teacher "b" "ab" "a" (vocab a b
    ab): one group, student "a" "b" vs teacher "ab". Merged student = q0[a] · q1; matched a, b,
    eos; unmatched teacher {ab}, student {ba}: |0.6 − 0.1| = 0.5 exactly."""
    s_tok, t_tok = Pieces(["a", "b", "ba"]), Pieces(["a", "b", "ab"])
    tokens = np.array([1, 0, 1, 0])  # b a b a
    t_ids, group_j, s_last, t_last = GroupAligner(s_tok, t_tok, 4).window(tokens)
    np.testing.assert_array_equal(t_ids, [1, 2, 0, -1])  # b ab a
    np.testing.assert_array_equal(group_j, [0, -1, -1])  # the last aligned pair closes no group
    assert (s_last[0], t_last[0]) == (1, 0)
    q0, q1 = np.array([0.5, 0.2, 0.2, 0.1]), np.array([0.1, 0.6, 0.2, 0.1])
    p0 = np.array([0.2, 0.1, 0.6, 0.1])
    zs = np.log(np.stack([q0, q1, np.full(4, 0.25)]))[None]
    zt = np.log(np.stack([p0, np.full(4, 0.25), np.full(4, 0.25)]))[None]
    beta = 0.5
    cfg = DistillConfig(cross_tokenizer="gold", loss="jsd", beta=beta, alpha=1.0, temperature=1.0)
    loss_fn = jax.jit(GoldLoss(cfg, vocabulary_map(s_tok, t_tok)).__call__)  # one compile
    loss, metrics = loss_fn(
        jnp.asarray(zs, jnp.float32),
        jnp.asarray(zt, jnp.float32),
        *(jnp.asarray(x[None]) for x in (group_j, s_last, t_last)),
        jnp.asarray(tokens[None, 1:]),
        jnp.asarray(t_ids[None, 1:]),
    )
    P_s = 0.5 * q1  # (a, b, ba, eos) = (.05, .3, .1, .05)
    matched = reference_jsd(p0[[0, 1, 3]], P_s[[0, 1, 3]], beta)
    np.testing.assert_allclose(float(metrics["distill/matched"]), matched, **tol("f32_reorder"))
    np.testing.assert_allclose(float(metrics["distill/unmatched"]), 0.5, **tol("f32_reorder"))
    np.testing.assert_allclose(float(loss), 0.75 * matched + 0.25 * 0.5, **tol("f32_reorder"))
    assert float(metrics["distill/aligned"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("loss", ["jsd", "fkl"])
def test_identical_tokenizers_reduce_to_the_plain_divergence(loss):
    tok = Pieces(["de", "f", " ", "x", "a", "b"])
    tokens = np.concatenate([tok.encode("def x"), [tok.eos_id], tok.encode("ab de")])
    S = len(tokens) - 1
    t_ids, group_j, s_last, t_last = GroupAligner(tok, tok, S + 1).window(tokens)
    np.testing.assert_array_equal(t_ids, tokens)
    np.testing.assert_array_equal(group_j[:-1], np.arange(S - 1))  # every position, one token
    np.testing.assert_array_equal(s_last[:-1], np.arange(S - 1))
    rng = np.random.default_rng(0)
    zs = jnp.asarray(rng.normal(size=(1, S, 7)) * 2, jnp.float32)
    zt = jnp.asarray(rng.normal(size=(1, S, 7)) * 2, jnp.float32)
    cfg = DistillConfig(cross_tokenizer="gold", loss=loss, beta=0.3, temperature=2.0, alpha=1.0)
    _, metrics = jax.jit(GoldLoss(cfg, vocabulary_map(tok, tok)).__call__)(
        zs,
        zt,
        *(jnp.asarray(x[None]) for x in (group_j, s_last, t_last)),
        jnp.asarray(tokens[None, 1:]),
        jnp.asarray(t_ids[None, 1:]),
    )
    plain = DistillLoss(DistillConfig(loss=loss, beta=0.3, temperature=2.0)).per_position(zs, zt)
    want = float(np.mean(np.asarray(plain)[0, :-1]))
    np.testing.assert_allclose(float(metrics["distill/divergence"]), want, **tol("f32_reorder"))
    assert float(metrics["distill/unmatched"]) == 0.0


def _model(vocab, seed):
    cfg = ModelConfig(
        vocab_size=vocab, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3
    )
    return Transformer(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("direction", ["byte_student", "byte_teacher"])
def test_objective_matches_the_numpy_reference_both_directions(direction):
    byte, pieces = ByteTokenizer(), Pieces(["de", "f", " ", "x", "ab", "a", "b", "d", "e", "fx"])
    texts = ["def xab", "ab de f", "fx abde"]
    if direction == "byte_student":
        s_tok, t_tok, Vs, Vt, L = byte, pieces, 259, pieces.eos_id + 1, 8
    else:
        s_tok, t_tok, Vs, Vt, L = pieces, byte, pieces.eos_id + 1, 259, 12
    windows = [s_tok.encode(t) for t in texts]
    S = min(len(w) for w in windows) - 1
    windows = np.stack([w[: S + 1] for w in windows])
    packed = GroupAligner(s_tok, t_tok, L).batch(windows)
    cfg = DistillConfig(cross_tokenizer="gold", loss="jsd", beta=0.3, alpha=0.6, temperature=1.5)
    vmap = vocabulary_map(s_tok, t_tok)
    tokens, t_ids = (np.asarray(x) for x in unpack(packed, S, L)[:2])
    t_in = np.maximum(t_ids[:, :-1], 0)
    if direction == "byte_student":  # the whole objective, models and gradients included
        student, teacher = _model(Vs, 0), _model(Vt, 1)
        fn = make_objective(cfg, nnx.graphdef(teacher), S, L, vmap)

        @nnx.jit  # one compile, not one per primitive
        def run(model, teacher, packed_BX, tokens_BS, t_in_BL):
            objective = lambda m: fn(m, packed_BX, jax.random.key(0), nnx.state(teacher))  # noqa: E731
            value, grads = nnx.value_and_grad(objective, has_aux=True)(model)
            return value, grads, model(tokens_BS), teacher(t_in_BL)

        (loss, metrics), grads, zs, zt = run(student, teacher, packed, tokens[:, :-1], t_in)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    else:  # the loss alone on random logits (a second model compile would add seconds)
        rng = np.random.default_rng(3)
        zs = jnp.asarray(rng.normal(size=(len(windows), S, Vs)) * 3, jnp.float32)
        zt = jnp.asarray(rng.normal(size=(len(windows), L - 1, Vt)) * 3, jnp.float32)
        _, _, *groups = (jnp.asarray(x) for x in unpack(packed, S, L))
        loss, metrics = jax.jit(GoldLoss(cfg, vmap).__call__)(
            zs, zt, *groups, jnp.asarray(tokens[:, 1:]), jnp.asarray(t_ids[:, 1:])
        )
    zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)
    s_len = np.array([len(p) or 1 for p in s_tok.token_bytes()])
    t_len = np.array([len(p) or 1 for p in t_tok.token_bytes()])
    values, merged = [], False
    for b in range(len(windows)):
        n_t = int((t_ids[b] >= 0).sum())
        s_ends, t_ends = np.cumsum(s_len[tokens[b]]), np.cumsum(t_len[t_ids[b, :n_t]])
        # predicted tokens: student 1 … S, teacher 1 … n_t − 1 (token k predicted at k − 1),
        # walked from the first byte boundary both share after their first tokens
        first = sorted(set(s_ends[:S]) & set(t_ends[: min(n_t, L - 1)]))[0]
        s0, t0 = int(np.searchsorted(s_ends, first)) + 1, int(np.searchsorted(t_ends, first)) + 1
        q = softmax(zs[b] / cfg.temperature)
        p = softmax(zt[b] / cfg.temperature)
        for sg, tg in reference_groups(s_ends[s0:], t_ends[t0:n_t]):
            sg, tg = [s0 + k for k in sg], [t0 + k for k in tg]
            if sg[-1] > S - 1 or tg[-1] > L - 2:  # ends past the last aligned pair: dropped
                continue
            P_s = reference_merge(q[np.array(sg) - 1], tokens[b, sg], range(len(sg)))
            P_t = reference_merge(p[np.array(tg) - 1], t_ids[b, tg], range(len(tg)))
            values.append(reference_hybrid(P_t, P_s, strings(t_tok), strings(s_tok), 0.3))
            merged |= max(len(sg), len(tg)) > 1
    assert len(values) >= 6 and merged  # several groups, some merging several tokens
    gold = np.mean(values)
    logq = np.log(softmax(zs))
    ce = -np.mean(np.take_along_axis(logq, tokens[:, 1:, None], -1))
    np.testing.assert_allclose(float(metrics["distill/divergence"]), gold, **tol("f32_reorder"))
    np.testing.assert_allclose(float(loss), 0.6 * gold + 0.4 * ce, **tol("f32_reorder"))
    assert float(metrics["distill/aligned"]) == pytest.approx(len(values) / (3 * S))


def test_gold_config_validation():
    with pytest.raises(ValueError, match="valid: none, uld, gold"):
        DistillConfig(cross_tokenizer="mined")
    with pytest.raises(ValueError, match="set both"):
        DistillConfig(cross_tokenizer="gold", gold_matched_weight=1.0)
    with pytest.raises(ValueError, match="gold_matched_weight must be >= 0"):
        DistillConfig(cross_tokenizer="gold", gold_matched_weight=-1.0, gold_unmatched_weight=1.0)
    with pytest.raises(ValueError, match="needs distill.cross_tokenizer=gold"):
        DistillConfig(gold_matched_weight=1.0, gold_unmatched_weight=1.0)
    with pytest.raises(ValueError, match="top_k=8 is not supported with .*=gold"):
        DistillConfig(cross_tokenizer="gold", top_k=8)
    with pytest.raises(ValueError, match="needs distill.cross_tokenizer=gold"):
        GoldLoss(DistillConfig(cross_tokenizer="uld"), (np.zeros(0), np.zeros(0)))


# ---------------------------------------------------------------------------------------------
# The CLI, both directions
# ---------------------------------------------------------------------------------------------

QUICK = [
    "train.batch_size=8",
    "train.seq_len=32",
    "train.eval_every=0",
    "train.checkpoint_every=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.steps=3",
    "model.n_layers=1",
    "distill.cross_tokenizer=gold",
    "distill.loss=jsd",
    "distill.temperature=1.0",
]


def test_cli_both_directions_and_bad_input(nano_run, tmp_path, monkeypatch, capsys):
    """byte teacher (the session's nano run) → BPE-300 student, then that BPE run as the teacher
    of a byte student; the GOLD metrics are logged and finite. Bad input: one line, exit 2."""
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path / "cache"))
    bpe_student, byte_student = tmp_path / "bpe", tmp_path / "byte"
    small = ["data.max_corpus_bytes=100000"]
    bpe = ["data.tokenizer=bpe", "data.bpe_vocab_size=300"]
    assert (
        main("distill", str(nano_run), "nano", *small, *bpe, *QUICK, f"workdir={bpe_student}") == 0
    )
    args = ("distill", str(bpe_student), "nano", *small, "data.tokenizer=byte", *QUICK)
    assert main(*args, f"workdir={byte_student}") == 0
    for run in (bpe_student, byte_student):
        rows = [r for r in load_metrics(run) if "distill/matched" in r]
        assert len(rows) == 3
        for key in ("distill/divergence", "distill/matched", "distill/unmatched"):
            assert all(np.isfinite(r[key]) for r in rows)
        assert 0 < rows[-1]["distill/aligned"] <= 1
    capsys.readouterr()
    # --dry-run plans the student on its own tokenizer (BPE-512), not the byte teacher's 320 ids
    bpe512 = ["data.tokenizer=bpe", "data.bpe_vocab_size=512"]
    dry = ("distill", str(nano_run), "nano", *small, *bpe512, *QUICK, f"workdir={tmp_path / 'd'}")
    assert main(*dry, "--dry-run") == 0
    assert '"vocab_size": 512,' in capsys.readouterr().out
    bad = tmp_path / "bad"
    for extra, message in (
        (["distill.gold_matched_weight=0.5"], "set both"),
        (["distill.cross_tokenizer=mined"], "choose one of: 'none' | 'uld' | 'gold'"),
    ):
        assert main(*args, *extra, f"workdir={bad}") == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not bad.exists()
    # without a cross-tokenizer method the mismatch names both
    base = [a for a in args if a != "distill.cross_tokenizer=gold"]
    assert main(*base, f"workdir={bad}") == 2
    err = capsys.readouterr().err.strip()
    assert "cross_tokenizer=uld" in err and "cross_tokenizer=gold" in err and not bad.exists()
