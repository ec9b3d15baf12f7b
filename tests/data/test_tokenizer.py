"""Tokenizers: exact UTF-8 round trip, lossy decode of invalid bytes, save/load, determinism."""

import os
import random
import stat

import numpy as np
import pytest

from compactlm.data import (
    SPECIAL_TOKENS,
    BpeTokenizer,
    ByteTokenizer,
    DataConfig,
    DataError,
    load_corpus,
    load_tokenizer,
    make_tokenizer,
)

_TRICKY = [
    "",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "\x00null\x00bytes\x00",
    "crlf\r\nline\rcr\n",
    "\u0301lone combining mark first, then a\u0301\u0327",
    "emoji 🎉👩‍👩‍👧‍👦 flags 🇯🇵 skin 👍🏽",
    "CJK 漢字かなカナ한국어, RTL עברית العربية",
    "\ttabs\t\tand\u00a0nbsp\u2028line sep\ufeffbom",
    "literal specials <|eos|><|pad|><|bos|> stay text",
    "def f(x):\n    return x  # code\n",
    "\U0010ffff max code point \ue000 private use",
]


def _random_text(rng: random.Random, n: int) -> str:
    """Random code points from everywhere (no surrogates: they are not valid UTF-8)."""
    pools = [
        (0x00, 0x7F),
        (0x80, 0x7FF),
        (0x300, 0x36F),  # combining marks
        (0x4E00, 0x9FFF),  # CJK
        (0x1F300, 0x1FAFF),  # emoji
        (0x0, 0x10FFFF),
    ]
    out = []
    while len(out) < n:
        lo, hi = rng.choice(pools)
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        out.append(chr(cp))
        if rng.random() < 0.1:
            out.append(rng.choice([" ", "  ", "\n", "\r\n", "\t"]))
    return "".join(out)


def _cases() -> list[str]:
    rng = random.Random(1234)
    return _TRICKY + [_random_text(rng, rng.randint(1, 300)) for _ in range(150)]


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    docs = load_corpus("pydocs", max_corpus_bytes=200_000)
    return BpeTokenizer.train([d.text for d in docs], vocab_size=512)


def _roundtrip(tok, text: str) -> None:
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < tok.vocab_size)
    assert not np.isin(ids, [tok.eos_id, tok.pad_id, tok.bos_id]).any()
    assert tok.decode(ids) == text
    assert tok.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))


def test_byte_roundtrip_arbitrary_utf8() -> None:
    tok = ByteTokenizer()
    for text in _cases():
        _roundtrip(tok, text)
        np.testing.assert_array_equal(tok.encode(text), np.frombuffer(text.encode(), np.uint8))


def test_bpe_roundtrip_arbitrary_utf8(bpe: BpeTokenizer) -> None:
    for text in _cases():
        _roundtrip(bpe, text)
    batch = _cases()[:40]
    for text, ids in zip(batch, bpe.encode_batch(batch), strict=True):
        np.testing.assert_array_equal(ids, bpe.encode(text))


def test_bpe_compresses(bpe: BpeTokenizer) -> None:
    text = load_corpus("pydocs")[0].text
    assert bpe.encode(text).size < 0.5 * len(text.encode())


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_decode_invalid_utf8_replaces(kind: str, bpe: BpeTokenizer) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    ids = tok.encode("é漢🎉")
    # Drop the final token: the text ends in the middle of a multi-byte character.
    cut = tok.decode(ids[:-1])
    assert cut.startswith("é") and cut.endswith("\ufffd")
    # Specials are not text.
    assert tok.decode(np.concatenate([[tok.eos_id], ids, [tok.pad_id, tok.bos_id]])) == "é漢🎉"


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_decode_rejects_out_of_vocab_ids(kind: str, bpe: BpeTokenizer) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([1, tok.vocab_size])


def test_special_ids_follow_vocab(bpe: BpeTokenizer) -> None:
    byte = ByteTokenizer()
    assert byte.vocab_size == 256 + len(SPECIAL_TOKENS)
    assert (byte.eos_id, byte.pad_id, byte.bos_id) == (256, 257, 258)
    assert bpe.vocab_size == 512
    assert (bpe.eos_id, bpe.pad_id, bpe.bos_id) == (509, 510, 511)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_save_load_equal(kind: str, bpe: BpeTokenizer, tmp_path) -> None:
    tok = ByteTokenizer() if kind == "byte" else bpe
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and loaded == tok
    assert loaded.fingerprint() == tok.fingerprint()
    for text in _TRICKY:
        np.testing.assert_array_equal(loaded.encode(text), tok.encode(text))
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temp files left


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_tokenizer_is_as_readable_as_the_umask_says(umask, mode, bpe, tmp_path) -> None:
    """The atomic write goes through mkstemp (0600); the file a run shares must not stay private."""
    old = os.umask(umask)
    try:
        path = bpe.save(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_load_missing_tokenizer(tmp_path) -> None:
    with pytest.raises(DataError, match="no tokenizer saved"):
        load_tokenizer(tmp_path)


def test_bpe_training_is_deterministic(bpe: BpeTokenizer) -> None:
    docs = load_corpus("pydocs", max_corpus_bytes=200_000)
    again = BpeTokenizer.train([d.text for d in docs], vocab_size=512)
    assert again.fingerprint() == bpe.fingerprint()


def test_make_tokenizer_from_config() -> None:
    assert isinstance(make_tokenizer(DataConfig(tokenizer="byte"), []), ByteTokenizer)
    tok = make_tokenizer(DataConfig(tokenizer="bpe", bpe_vocab_size=300), ["hello world " * 50])
    # Far fewer merges exist than requested: the vocabulary is still the configured size.
    assert isinstance(tok, BpeTokenizer) and tok.n_base < 297 and tok.vocab_size == 300
    assert tok.decode([tok.n_base + 5, *tok.encode("hello")]) == "hello"  # unused id: no text
    assert tok.token_byte_lengths().shape == (300,)
    with pytest.raises(DataError, match="too small"):
        make_tokenizer(DataConfig(tokenizer="bpe", bpe_vocab_size=100), ["x"])


@pytest.mark.parametrize("kind", ["byte", "bpe", "hf"])
def test_token_bytes_spell_every_encoding(kind: str, bpe: BpeTokenizer) -> None:
    from compactlm.data.tokenizer import HfTokenizer

    tok = {"byte": ByteTokenizer(), "bpe": bpe}.get(kind)
    if kind == "hf":  # a byte-level tokenizer.json as `compactlm import` brings one in
        n = bpe.n_base
        tok = HfTokenizer(bpe._tok, vocab_size=n + 3, eos_id=n, pad_id=n + 1, bos_id=n + 2)
    pieces = tok.token_bytes()
    assert len(pieces) == tok.vocab_size
    assert [pieces[i] for i in (tok.eos_id, tok.pad_id, tok.bos_id)] == [b"", b"", b""]
    for text in _cases():
        assert b"".join(pieces[i] for i in tok.encode(text)) == text.encode("utf-8")


def test_byte_level_table_is_the_tokenizers_alphabet() -> None:
    from tokenizers import pre_tokenizers

    from compactlm.data.tokenizer import _byte_level_table

    table = _byte_level_table()
    assert set(table) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(table.values()) == list(range(256))


def test_heal_prompt_backs_off_the_last_token_and_masks_its_completions(bpe) -> None:
    from compactlm.data.tokenizer import heal_prompt

    prompt = "def f(x):\n    return "
    ids, allowed = heal_prompt(bpe, prompt)
    full = bpe.encode(prompt)
    np.testing.assert_array_equal(ids, full[:-1])
    assert allowed is not None and allowed[full[-1]]  # the original split stays possible
    # Reference through the tokenizer's own decoder: id j is allowed iff the healed prompt
    # followed by j decodes to a text that starts with the whole prompt.
    expected = [bpe.decode([*ids, j]).startswith(prompt) for j in range(bpe.vocab_size)]
    np.testing.assert_array_equal(allowed, expected)
    assert 1 < allowed.sum() < bpe.vocab_size // 2
    # Nothing to heal: byte-level ids, a one-token prompt.
    assert heal_prompt(ByteTokenizer(), prompt)[1] is None
    one = bpe.decode(bpe.encode("def")[:1])
    assert heal_prompt(bpe, one)[1] is None


def test_hf_tokenizer_saves_its_stop_ids_and_template_and_reads_old_files(tmp_path, bpe) -> None:
    """An imported tokenizer's stop ids (eos first), chat template and special-token strings
    survive save / load; a tokenizer.json saved before they existed still loads (stopping at eos
    only, no template) and keeps its fingerprint, which covers tokenization alone (token caches
    and distillation's one-tokenizer check stay valid)."""
    import hashlib
    import json

    from compactlm.data.tokenizer import HfTokenizer

    n = bpe.n_base
    ids = dict(vocab_size=n + 3, eos_id=n, pad_id=n + 1, bos_id=n + 2)
    tok = HfTokenizer(
        bpe._tok,
        **ids,
        stop_ids=(n + 1, n),
        chat_template="{{ bos_token }}{{ messages[0].content }}",
        special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
    )
    assert tok.stop_ids == (n, n + 1)
    back = load_tokenizer(tok.save(tmp_path / "new").parent)
    assert isinstance(back, HfTokenizer)
    for field in ("stop_ids", "chat_template", "special_tokens", "eos_id", "bos_id", "pad_id"):
        assert getattr(back, field) == getattr(tok, field), field
    assert back.decode([n + 1, *bpe.encode("héllo"), n]) == "héllo"  # stop ids are not text
    # The saved form before issue 18's tokenizer fields, and its fingerprint then (sha256 of it).
    old = {
        "compactlm_tokenizer": "hf",
        "vocab_size": n + 3,
        "eos_id": n,
        "bos_id": n + 2,
        "pad_id": n + 1,
        "hf": json.loads(bpe._tok.to_str()),
    }
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(old))
    loaded = load_tokenizer(tmp_path / "old")
    assert (loaded.stop_ids, loaded.chat_template, loaded.special_tokens) == ((n,), None, {})
    then = hashlib.sha256(json.dumps(old).encode()).hexdigest()
    assert loaded.fingerprint() == then == tok.fingerprint()
    with pytest.raises(DataError, match=r"stop ids \[\d+, 9999\] outside the vocabulary"):
        HfTokenizer(bpe._tok, **ids, stop_ids=(9999,))
