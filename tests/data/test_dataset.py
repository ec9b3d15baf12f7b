"""prepare_data: cache and run-directory tokenizer; batches as pure functions of (seed, step)."""

import json
import os
import stat

import numpy as np
import pytest

from compactlm.data import (
    BpeTokenizer,
    ByteTokenizer,
    DataConfig,
    DataError,
    covered_bytes,
    eval_batches,
    get_batch,
    load_tokenizer,
    prepare_data,
)


def _cfg(tmp_path, **kw) -> DataConfig:
    kw.setdefault("corpus", "pydocs")
    return DataConfig(cache_dir=str(tmp_path / "cache"), **kw)


def test_config_validates_modes() -> None:
    with pytest.raises(DataError, match="'byte', 'bpe'"):
        DataConfig(tokenizer="sentencepiece")
    with pytest.raises(DataError, match="val_fraction"):
        DataConfig(val_fraction=0.7)
    with pytest.raises(TypeError):
        DataConfig("pydocs")  # keyword-only


def test_prepare_byte_tokens_match_corpus(tmp_path) -> None:
    data = prepare_data(_cfg(tmp_path, val_fraction=0.05))
    tok = data.tokenizer
    assert isinstance(tok, ByteTokenizer)
    assert isinstance(data.train_tokens, np.memmap) and data.train_tokens.dtype == np.uint16
    assert data.val_tokens[0] == tok.eos_id and data.val_tokens[-1] == tok.eos_id
    # Layout <eos> doc <eos> doc ... <eos>: decoding drops the separators, leaving the text.
    assert tok.decode(data.val_tokens) == data.val_text
    assert data.val_bytes == len(data.val_text.encode()) == data.split["val_bytes"]
    assert data.val_tokens.size == data.val_bytes + data.split["val_docs"] + 1
    assert covered_bytes(tok, data.val_tokens) == data.val_bytes
    json.dumps(data.info())


def test_cache_is_reused_and_keyed_by_tokenizer(tmp_path) -> None:
    first = prepare_data(_cfg(tmp_path))
    assert not first.cache_hit
    npy = tmp_path / "cache" / "tokens" / first.cache_key / "train.npy"
    mtime = os.stat(npy).st_mtime_ns
    again = prepare_data(_cfg(tmp_path))
    assert again.cache_hit and again.cache_key == first.cache_key
    assert os.stat(npy).st_mtime_ns == mtime
    np.testing.assert_array_equal(again.train_tokens, first.train_tokens)

    bpe = prepare_data(_cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=512))
    assert not bpe.cache_hit and bpe.cache_key != first.cache_key
    other_split = prepare_data(_cfg(tmp_path, split_seed=1))
    assert not other_split.cache_hit and other_split.cache_key != first.cache_key
    capped = prepare_data(_cfg(tmp_path, max_corpus_bytes=100_000))
    assert capped.cache_key != first.cache_key
    # Only finished entries: no temporary directories or files left behind.
    leftovers = [p for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == []


def test_cache_entries_are_as_readable_as_the_umask_says(tmp_path) -> None:
    """An entry is built in a mkdtemp directory (0700): renamed into place it must be 0755 (and
    its files 0644) under umask 022, or a shared cache would serve only its first user."""
    old = os.umask(0o022)
    try:
        data = prepare_data(_cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=512))
    finally:
        os.umask(old)
    entry = tmp_path / "cache" / "tokens" / data.cache_key
    assert stat.S_IMODE(entry.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in entry.iterdir()}
    assert "meta.json" in modes and modes == dict.fromkeys(modes, 0o644), modes


def test_cache_key_follows_file_content(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}\n" for i in range(2000)))
    first = prepare_data(_cfg(tmp_path, corpus=str(path)))
    path.write_text("".join(f"LINE {i}\n" for i in range(2000)))
    second = prepare_data(_cfg(tmp_path, corpus=str(path)))
    assert not second.cache_hit and second.cache_key != first.cache_key
    assert second.split["mode"] == "tail"


def test_bpe_tokenizer_saved_in_run_dir_and_reloaded(tmp_path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=512)
    data = prepare_data(cfg, run_dir=run)
    assert isinstance(data.tokenizer, BpeTokenizer) and data.tokenizer.vocab_size == 512
    assert load_tokenizer(run) == data.tokenizer
    assert data.tokenizer.decode(data.val_tokens) == data.val_text
    assert covered_bytes(data.tokenizer, data.val_tokens) == data.val_bytes
    # The run directory's tokenizer wins over the cache: change the cached one, resume.
    for p in (tmp_path / "cache" / "tokenizers").rglob("tokenizer.json"):
        p.unlink()
    resumed = prepare_data(cfg, run_dir=run)
    assert resumed.tokenizer == data.tokenizer and resumed.cache_hit
    with pytest.raises(DataError, match="holds a bpe tokenizer"):
        prepare_data(_cfg(tmp_path, tokenizer="byte"), run_dir=run)


def test_user_jsonl_end_to_end(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"doc {i} " + "z" * 50}) + "\n" for i in range(100))
    )
    data = prepare_data(_cfg(tmp_path, corpus=str(path), val_fraction=0.1))
    assert data.split["mode"] == "documents" and 5 <= data.split["val_docs"] <= 10
    assert data.tokenizer.decode(data.train_tokens).count("doc ") == data.split["train_docs"]


# --- batches -------------------------------------------------------------------------------------


def test_get_batch_is_a_pure_function_of_seed_and_step() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)
    kw = dict(batch_size=8, seq_len=32)
    b5 = get_batch(tokens, seed=0, step=5, **kw)
    assert b5.shape == (8, 33) and b5.dtype == np.int32
    np.testing.assert_array_equal(b5[:, 1:], b5[:, :-1] + 1)  # contiguous windows
    # Same batch whatever was drawn before (a resumed run starts at step 5).
    for step in (9, 0, 3):
        get_batch(tokens, seed=0, step=step, **kw)
    np.testing.assert_array_equal(get_batch(tokens, seed=0, step=5, **kw), b5)
    assert not np.array_equal(get_batch(tokens, seed=0, step=6, **kw), b5)
    assert not np.array_equal(get_batch(tokens, seed=1, step=5, **kw), b5)
    # Rows are independent of batch size, so hosts can build their slice of the global batch.
    np.testing.assert_array_equal(
        get_batch(tokens, seed=0, step=5, batch_size=3, seq_len=32, row_start=4), b5[4:7]
    )


def test_get_batch_offsets_cover_the_range() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    starts = np.concatenate(
        [get_batch(tokens, seed=7, step=s, batch_size=64, seq_len=9)[:, 0] for s in range(50)]
    )
    assert starts.min() == 0 and starts.max() == 100 - 10  # the last full window is reachable
    counts = np.bincount(starts, minlength=91)
    assert counts.min() > 0.5 * counts.mean()  # roughly uniform
    with pytest.raises(DataError, match="too few"):
        get_batch(tokens, seed=0, step=0, batch_size=1, seq_len=100)


def test_get_batch_on_memmap(tmp_path) -> None:
    data = prepare_data(_cfg(tmp_path))
    b = get_batch(data.train_tokens, seed=3, step=11, batch_size=4, seq_len=64)
    assert b.max() < data.tokenizer.vocab_size


@pytest.mark.parametrize(
    "n,batch,seq,max_tokens",
    [(1000, 4, 16, None), (1000, 3, 7, 333), (17, 2, 16, None), (2, 5, 8, None)],
)
def test_eval_batches_score_every_token_once(n, batch, seq, max_tokens) -> None:
    tokens = np.arange(n, dtype=np.uint16)
    scored = []
    shapes = set()
    for b in eval_batches(tokens, batch_size=batch, seq_len=seq, max_tokens=max_tokens, pad_id=0):
        shapes.add((b.tokens.shape, b.mask.shape))
        targets = b.tokens[:, 1:]
        scored.extend(targets[b.mask].tolist())
        np.testing.assert_array_equal(  # inputs are the tokens right before each target
            b.tokens[:, :-1][b.mask], targets[b.mask] - 1
        )
    limit = n if max_tokens is None else max_tokens
    assert scored == list(range(1, limit))
    assert shapes == {((batch, seq + 1), (batch, seq))}


def test_eval_covered_bytes_matches_decode(tmp_path) -> None:
    data = prepare_data(_cfg(tmp_path, tokenizer="bpe", bpe_vocab_size=512))
    n = 777
    text = data.tokenizer.decode(data.val_tokens[1:n])
    assert covered_bytes(data.tokenizer, data.val_tokens, max_tokens=n) == len(text.encode())


def test_pystdlib_default_split_size(tmp_path) -> None:
    data = prepare_data(DataConfig(cache_dir=str(tmp_path / "cache")))  # the default corpus
    assert data.split["corpus"] == "pystdlib" and data.split["mode"] == "documents"
    assert 200_000 < data.val_bytes < 400_000  # quick to evaluate, big enough to be stable
    assert data.train_tokens.size == data.train_bytes + data.split["train_docs"] + 1
    b = get_batch(data.train_tokens, seed=np.int64(2), step=np.int32(7), batch_size=2, seq_len=8)
    np.testing.assert_array_equal(
        b, get_batch(data.train_tokens, seed=2, step=7, batch_size=2, seq_len=8)
    )


def test_train_fraction_keeps_a_prefix_of_the_training_tokens_and_all_of_validation(
    tmp_path,
) -> None:
    full = prepare_data(_cfg(tmp_path))
    low = prepare_data(_cfg(tmp_path, train_fraction=0.03))
    assert low.cache_key == full.cache_key  # one cache: the cut is applied when it is read
    kept = int(full.train_tokens.size * 0.03)
    np.testing.assert_array_equal(low.train_tokens, full.train_tokens[:kept])
    np.testing.assert_array_equal(low.val_tokens, full.val_tokens)
    assert low.info()["train_tokens"] == kept and low.info()["train_bytes"] == low.train_bytes
    assert abs(low.train_bytes / full.train_bytes - kept / full.train_tokens.size) < 1e-6
    for bad in (0.0, 1.5):
        with pytest.raises(DataError, match="train_fraction"):
            _cfg(tmp_path, train_fraction=bad)
