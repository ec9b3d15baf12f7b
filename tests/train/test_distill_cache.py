"""Stored teacher logits (train/distill_cache.py): a student trained from the cache reproduces the
online `distill.top_k=k` run's losses to 1e-6 over a whole run, the cache resumes where an
interrupted build stopped, and every mismatch is one line, exit 2, nothing written."""

import json
import shutil

import numpy as np
import pytest

from compactlm.train.distill_cache import PROGRESS_FILE
from compactlm.train.loop import load_metrics
from tests.commandline import cli as main

FAST = [
    "data.max_corpus_bytes=200000",
    "train.eval_every=0",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
]
SHAPE = ["train.batch_size=8", "train.seq_len=32"]
CACHE_KEYS = ["top_k=16", "steps=4", "seeds=0,1", "batch_size=8", "seq_len=32"]
COMPARED = (
    "train/loss",
    "train/nll",
    "train/grad_norm",
    "distill/divergence",
    "distill/ce",
    "distill/teacher_ce",
    "distill/agreement",
)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "teacher"
    assert main("train", "nano", *FAST, *SHAPE, "train.steps=8", f"workdir={path}") == 0
    return path


@pytest.fixture(scope="module")
def cache(teacher, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "cache"
    assert main("distill-cache", str(teacher), "data.max_corpus_bytes=200000", *CACHE_KEYS,
                f"workdir={path}") == 0  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("distill", "extra"),
    [
        (["distill.loss=fkl", "distill.temperature=2", "distill.alpha=0.5"], []),
        (["distill.loss=jsd", "distill.beta=0.3", "distill.temperature=1", "distill.alpha=1"], []),
        (
            ["distill.loss=srkl", "distill.skew=0.2", "distill.temperature=2", "distill.alpha=0.7"],
            ["train.seed=1"],
        ),
        (["distill.loss=tvd", "distill.temperature=1", "distill.alpha=1"], []),
    ],
    ids=["fkl", "jsd", "srkl_seed1", "tvd"],
)
def test_cached_losses_equal_online_top_k_over_a_run(teacher, cache, tmp_path, distill, extra):
    common = ["nano", *FAST, *SHAPE, "model.n_layers=2", "train.steps=4", *distill, *extra]
    online, cached = tmp_path / "online", tmp_path / "cached"
    assert main("distill", str(teacher), *common, "distill.top_k=16", f"workdir={online}") == 0
    assert main("distill", str(cache), *common, f"workdir={cached}") == 0
    a = [m for m in load_metrics(online) if "distill/divergence" in m]
    b = [m for m in load_metrics(cached) if "distill/divergence" in m]
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4]
    for ma, mb in zip(a, b, strict=True):
        for key in COMPARED:
            np.testing.assert_allclose(mb[key], ma[key], rtol=0, atol=1e-6, err_msg=key)
    rows_online = json.loads((online / "eval.json").read_text())
    rows_cached = json.loads((cached / "eval.json").read_text())
    assert "teacher" not in rows_cached  # the teacher's model was never loaded
    np.testing.assert_allclose(
        rows_cached["student"]["loss"], rows_online["student"]["loss"], rtol=0, atol=1e-6
    )
    record = json.loads((cached / "distill.json").read_text())
    assert record["cache"] == str(cache.resolve()) and record["distill"]["top_k"] == 16


def test_cache_contents_match_the_teacher(teacher, cache):
    """ids / logits are the teacher's top-k, lse and tail rebuild its distribution at each T."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from compactlm.train.loop import load_run

    meta = json.loads((cache / "cache.json").read_text())
    t = load_run(teacher)
    model = t.program.model(t.state)
    tokens = np.load(cache / "tokens.npy")[2, 1]  # step 2, seed 1
    z = np.asarray(model(jnp.asarray(tokens[:, :-1])), np.float64)
    ids = np.load(cache / "ids.npy")[2, 1]
    np.testing.assert_array_equal(ids, np.argsort(-z, -1, kind="stable")[..., :16])
    np.testing.assert_allclose(np.load(cache / "logits.npy")[2, 1], np.take_along_axis(z, ids, -1),
                               atol=1e-5)  # fmt: skip
    for m, T in enumerate(meta["temperatures"]):
        log_p = z / T - np.log(np.exp(z / T).sum(-1, keepdims=True))
        lse = np.load(cache / "lse.npy")[2, 1, ..., m]
        np.testing.assert_allclose(lse, np.log(np.exp((z - z.max(-1, keepdims=True)) / T).sum(-1)),
                                   atol=1e-5)  # fmt: skip
        rest = np.ones_like(z, bool)
        np.put_along_axis(rest, ids, False, -1)
        tail = np.log(np.where(rest, np.exp(log_p), 0).sum(-1))
        np.testing.assert_allclose(np.load(cache / "tail.npy")[2, 1, ..., m], tail, atol=1e-4)
    nll = np.load(cache / "teacher_nll.npy")[2, 1]
    logz = np.log(np.exp(z).sum(-1))
    np.testing.assert_allclose(nll, logz - np.take_along_axis(z, tokens[:, 1:, None], -1)[..., 0],
                               atol=1e-5)  # fmt: skip
    del jax, nnx


def test_interrupted_build_resumes_to_the_same_bytes(teacher, cache, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(cache, partial)
    fields = ("tokens", "ids", "logits", "lse", "tail", "teacher_nll")
    for name in fields:  # as if the build stopped after 3 of the 8 (step, seed) slots
        a = np.load(partial / f"{name}.npy", mmap_mode="r+")
        a[1, 1:] = 0
        a[2:] = 0
        a.flush()
    (partial / PROGRESS_FILE).write_text(json.dumps({"written": 3}))
    common = ["nano", *FAST, *SHAPE, "train.steps=2"]
    # seed 0 has steps 0, 1 written; seed 1 only step 0
    assert main("distill", str(partial), *common, "train.seed=1", f"workdir={tmp_path / 's'}") == 2
    assert "train.steps=2 exceeds" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main("distill-cache", str(teacher), "data.max_corpus_bytes=200000", *CACHE_KEYS,
                f"workdir={partial}") == 0  # fmt: skip
    assert "3 of 8 slots already written" in capsys.readouterr().out
    for name in fields:
        np.testing.assert_array_equal(
            np.load(partial / f"{name}.npy"), np.load(cache / f"{name}.npy")
        )
    # another request into the same directory is refused, nothing changed
    assert main("distill-cache", str(teacher), "data.max_corpus_bytes=200000", "top_k=8",
                *CACHE_KEYS[1:], f"workdir={partial}") == 2  # fmt: skip
    assert "holds another cache (top_k: saved 16, now 8" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.steps=5"], "train.steps=5 exceeds the cache"),
        (["train.seed=2"], "train.seed=2 is not among the cache"),
        (["distill.temperature=3"], "holds the tail bucket at T = 1, 2 only"),
        (["distill.top_k=8"], "holds the top 16"),
        (["distill.on_policy=0.5"], "distill.on_policy=0.5 needs the teacher's model"),
        (["distill.features=cosine"], "distill.features=cosine needs the teacher's model"),
        (["distill.cross_tokenizer=uld"], "distill.cross_tokenizer=uld needs the teacher's"),
        (["train.batch_size=4"], "train.batch_size=4 differs from the cache"),
        (["data.train_fraction=0.5"], "data mismatch"),
        (["data.tokenizer=bpe", "data.bpe_vocab_size=300"], "tokenizer mismatch"),
    ],
)
def test_student_mismatch_is_one_line_exit_2(cache, tmp_path, capsys, overrides, message):
    out = tmp_path / "student"
    args = ["nano", *FAST, *SHAPE, "train.steps=4", *overrides, f"workdir={out}"]
    assert main("distill", str(cache), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_changed_teacher_is_refused(teacher, tmp_path, capsys):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    cache = tmp_path / "cache"
    keys = ["top_k=4", "steps=1", "batch_size=8", "seq_len=32", "temperatures=1"]
    assert main("distill-cache", str(copy), "data.max_corpus_bytes=200000", *keys,
                f"workdir={cache}") == 0  # fmt: skip
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    out = tmp_path / "student"
    args = ["nano", *FAST, *SHAPE, "train.steps=1", "distill.temperature=1", f"workdir={out}"]
    assert main("distill", str(cache), *args) == 2
    err = capsys.readouterr().err.strip()
    assert "teacher changed" in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (["top_k=0"], "top_k=0 must be in [1, 319]"),
        (["top_k=320"], "top_k=320 must be in [1, 319]"),
        (["steps=-1"], "steps must be >= 1"),
        (["temperatures=0"], "temperatures must be distinct and > 0"),
        (["seeds=1,1"], "seeds must be distinct"),
        (["topk=4"], "topk"),
        (["data.tokenizer=bpe", "data.bpe_vocab_size=300"], "not the teacher's"),
    ],
)
def test_cache_bad_input_is_one_line_exit_2(teacher, tmp_path, capsys, keys, message):
    out = tmp_path / "cache"
    assert main("distill-cache", str(teacher), "data.max_corpus_bytes=200000", "steps=1",
                *keys, f"workdir={out}") == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_size_printed_and_full_disk_refused(teacher, tmp_path, capsys, monkeypatch):
    import collections

    from compactlm.train import distill_cache

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(distill_cache.shutil, "disk_usage", lambda _: usage(0, 0, 999))
    out = tmp_path / "cache"
    assert main("distill-cache", str(teacher), "data.max_corpus_bytes=200000", *CACHE_KEYS,
                f"workdir={out}") == 2  # fmt: skip
    captured = capsys.readouterr()
    # 8 slots x 8 rows x 32 positions x (2·16 + 2·2 + 1 + 33/32) x 4 bytes
    assert "2 seed(s) x 4 steps x 8 x 32 positions, top 16 + tail at T = 1, 2: 311.6 KB" in (
        captured.out
    )
    assert "has 999 B free; the cache needs 311.6 KB more" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not out.exists()
