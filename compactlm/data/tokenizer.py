"""Byte-level, locally trained BPE and imported Hugging Face tokenizers: one interface."""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from compactlm.data.config import DataError

if TYPE_CHECKING:
    from compactlm.data.config import DataConfig

# Special tokens sit after the ordinary vocabulary, in this order, for both tokenizers. They are
# never produced by encode() from text (a literal "<|eos|>" in the corpus stays ordinary bytes),
# so encode/decode round-trip any string exactly.
SPECIAL_TOKENS = ("<|eos|>", "<|pad|>", "<|bos|>")
TOKENIZER_FILE = "tokenizer.json"  # the file save()/load_tokenizer() use inside a directory


class Tokenizer(Protocol):
    """What the rest of compactlm relies on; both implementations below satisfy it."""

    kind: str
    vocab_size: int  # ordinary tokens + specials; the model's embedding needs at least this
    eos_id: int
    pad_id: int
    bos_id: int

    def encode(self, text: str) -> np.ndarray: ...
    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...
    def decode(self, ids) -> str: ...
    def token_byte_lengths(self) -> np.ndarray: ...
    def token_bytes(self) -> list[bytes]: ...
    def fingerprint(self) -> str: ...
    def save(self, directory: str | os.PathLike) -> Path: ...


class _Saved(abc.ABC):
    """What every tokenizer kind shares: its saved JSON form, fingerprinted, written atomically."""

    def fingerprint(self) -> str:
        """sha256 of the saved form: equal fingerprints tokenize identically (cache keys use it)."""
        return hashlib.sha256(self._serialize().encode()).hexdigest()

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.json` atomically; load_tokenizer(directory) restores it."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self._serialize())
        return path

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for specials and unused ids), for bits per byte:
        bytes covered = lengths[ids].sum()."""
        return np.array([len(piece) for piece in self.token_bytes()], np.int64)

    @abc.abstractmethod
    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (each tokenizer kind defines it)."""

    @abc.abstractmethod
    def _serialize(self) -> str:
        """The saved JSON text (each tokenizer kind defines it)."""


class _SpecialsMixin(_Saved):
    n_base: int  # ordinary tokens; specials are n_base, n_base + 1, ...
    vocab_size: int  # >= n_base + specials; ids past the specials are unused (decode to "")

    @property
    def eos_id(self) -> int:
        return self.n_base

    @property
    def pad_id(self) -> int:
        return self.n_base + 1

    @property
    def bos_id(self) -> int:
        return self.n_base + 2

    def _base_ids(self, ids) -> np.ndarray:
        """Ordinary ids of `ids` (specials dropped); out-of-range ids are an error, not skipped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][:5].tolist()
            raise ValueError(f"token ids {bad} outside the vocabulary [0, {self.vocab_size})")
        return ids[ids < self.n_base]  # specials and unused ids are not text


class ByteTokenizer(_SpecialsMixin):
    """ids 0..255 are the UTF-8 bytes, then the specials: no training, no files, any text."""

    kind = "byte"
    n_base = 256
    vocab_size = 256 + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        # Sampled ids can form invalid UTF-8 (half a multi-byte character): replace, don't crash.
        return self._base_ids(ids).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (b"" for specials)."""
        return [bytes([i]) for i in range(256)] + [b""] * len(SPECIAL_TOKENS)

    def _serialize(self) -> str:
        return json.dumps({"compactlm_tokenizer": "byte", "special_tokens": SPECIAL_TOKENS})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("byte")


class BpeTokenizer(_SpecialsMixin):
    """Byte-level BPE (GPT-2 style) from Hugging Face `tokenizers`, trained on our own text.

    The byte-level pre-tokenizer maps every byte to a visible character and all 256 of them are
    in the initial alphabet, so any text encodes without <unk>; the ByteLevel decoder maps back
    and decodes the bytes with replacement, so decode(encode(s)) == s for every string.
    Specials are kept out of the Hugging Face model (ids after it, handled here) so that text
    containing "<|eos|>" literally is not turned into the special token.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer, vocab_size: int | None = None) -> None:
        self._tok = hf_tokenizer
        self.n_base = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        # A small corpus can run out of merges before the requested size; the vocabulary is still
        # reported at the requested size (ids past the specials unused) so that a model built
        # from the config alone matches the tokenizer.
        self.vocab_size = max(vocab_size or 0, self.n_base + len(SPECIAL_TOKENS))

    @classmethod
    def train(cls, texts: list[str], *, vocab_size: int, min_frequency: int = 2) -> BpeTokenizer:
        """Train on `texts` (the training split only). Deterministic for the same input."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        n_base = vocab_size - len(SPECIAL_TOKENS)
        if n_base < 256:
            raise DataError(
                f"data.bpe_vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=n_base,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, vocab_size)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(texts, add_special_tokens=False)  # multi-threaded in Rust
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids) -> str:
        # The ByteLevel decoder decodes its bytes lossily: invalid UTF-8 becomes U+FFFD.
        return self._tok.decode(self._base_ids(ids).tolist(), skip_special_tokens=False)

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (b"" for specials and unused ids)."""
        out = [b""] * self.vocab_size
        for piece, i in self._tok.get_vocab().items():
            out[i] = byte_level_bytes(piece)
        return out

    def _serialize(self) -> str:
        hf = json.loads(self._tok.to_str())
        return json.dumps({"compactlm_tokenizer": "bpe", "vocab_size": self.vocab_size, "hf": hf})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BpeTokenizer) and self._serialize() == other._serialize()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


class HfTokenizer(_Saved):
    """A Hugging Face `tokenizer.json` brought in by `compactlm import` (any tokenizers model).

    Unlike ours, its specials live wherever the checkpoint put them (Llama 2: bos 1, eos 2), so
    the ids come from the checkpoint's tokenizer_config.json / generation_config.json /
    config.json (interop/hf_tokenizer.py::tokenizer_from_hf). encode() adds no specials (the
    training stream: documents separated by eos) and decode() drops them; encode_prompt() adds
    the tokenizer's own, as transformers' `tokenizer(text)` does. vocab_size is the model's
    embedding rows (>= the tokenizer's own ids). stop_ids: where generation ends, eos first
    (generation_config.json may list several: Llama 3 instruct). chat_template and
    special_tokens (name -> string, what the template sees) render chats (`generate chat=true`).
    """

    kind = "hf"

    def __init__(
        self,
        hf_tokenizer,
        *,
        vocab_size: int,
        eos_id: int,
        bos_id: int,
        pad_id: int,
        stop_ids: Sequence[int] = (),
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self._tok = hf_tokenizer
        self.n_tokens = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.vocab_size, self.eos_id, self.bos_id, self.pad_id = vocab_size, eos_id, bos_id, pad_id
        if self.n_tokens > vocab_size:
            raise DataError(
                f"tokenizer has {self.n_tokens} ids but the model's vocab_size is {vocab_size}"
            )
        self.stop_ids = tuple(dict.fromkeys(int(i) for i in (eos_id, *stop_ids)))
        if any(not 0 <= i < vocab_size for i in self.stop_ids):
            raise DataError(
                f"stop ids {list(self.stop_ids)} outside the vocabulary [0, {vocab_size})"
            )
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._special = {i for i, t in hf_tokenizer.get_added_tokens_decoder().items() if t.special}
        self._special |= {eos_id, bos_id, pad_id, *self.stop_ids}

    @classmethod
    def from_saved(cls, saved: Mapping) -> HfTokenizer:
        """The tokenizer `_serialize()` wrote. Saved before stop ids and chat templates: it
        stops at eos only and has no template."""
        from tokenizers import Tokenizer as HFTokenizer

        return cls(
            HFTokenizer.from_str(json.dumps(saved["hf"])),
            **{k: saved[k] for k in ("vocab_size", "eos_id", "bos_id", "pad_id")},
            stop_ids=saved.get("stop_ids", ()),
            chat_template=saved.get("chat_template"),
            special_tokens=saved.get("special_tokens"),
        )

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def encode_prompt(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, added): the ids transformers' `tokenizer(text)` gives for a prompt, the
        tokenizer.json's post-processor adding the family's specials (Llama 3, Gemma: BOS in
        front; Qwen, SmolLM: none), and the mask of the ids it added (not text)."""
        enc = self._tok.encode(text, add_special_tokens=True)
        return np.asarray(enc.ids, np.int32), np.asarray(enc.special_tokens_mask, bool)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][:5].tolist()
            raise ValueError(f"token ids {bad} outside the vocabulary [0, {self.vocab_size})")
        keep = [int(i) for i in ids if i < self.n_tokens and int(i) not in self._special]
        return self._tok.decode(keep, skip_special_tokens=True)

    def token_bytes(self) -> list[bytes]:
        """The bytes each id stands for (b"" for specials and unused ids). Byte-level
        vocabularies (GPT-2 / Llama 3): one character per byte. SentencePiece-style ones
        (Llama 2): "▁" is a space, "<0xAB>" byte-fallback pieces are one byte."""
        byte_level = "ByteLevel" in json.dumps(json.loads(self._tok.to_str()).get("decoder"))
        out = [b""] * self.vocab_size
        for piece, i in self._tok.get_vocab(with_added_tokens=True).items():
            if i in self._special or i >= self.vocab_size:
                continue
            if byte_level:
                out[i] = byte_level_bytes(piece)
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out[i] = bytes([int(piece[3:5], 16)])
            else:
                out[i] = piece.replace("\u2581", " ").encode("utf-8")
        return out

    def _tokenization(self) -> dict:
        """The saved fields that decide how text becomes ids (and the model's special ids)."""
        return {
            "compactlm_tokenizer": "hf",
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
            "pad_id": self.pad_id,
            "hf": json.loads(self._tok.to_str()),
        }

    def fingerprint(self) -> str:
        """sha256 of the tokenization fields alone: the token cache and distillation's "one
        tokenizer" check do not depend on where generation stops or on the chat template (and
        tokenizers saved before those fields keep their fingerprint)."""
        return hashlib.sha256(json.dumps(self._tokenization()).encode()).hexdigest()

    def _serialize(self) -> str:
        return json.dumps(
            {
                **self._tokenization(),
                "stop_ids": list(self.stop_ids),
                "special_tokens": self.special_tokens,
                "chat_template": self.chat_template,
            }
        )

    def hf_json(self) -> str:
        """The Hugging Face tokenizer.json text (what `compactlm export` writes)."""
        return self._tok.to_str()


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what `tokenizers`' ByteLevel pre-tokenizer uses): printable
    Latin-1 bytes stand for themselves, the other 68 bytes for code points 256, 257, ... in
    byte order (Radford et al. 2019, openai/gpt-2 encoder.py bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def byte_level_bytes(piece: str) -> bytes:
    """The bytes a byte-level BPE piece stands for (one character per byte)."""
    table = _byte_level_table()
    return bytes(table[c] for c in piece)


def prompt_tokens(tokenizer: Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, added) of a prompt to continue. An imported checkpoint's tokenizer adds what its
    tokenizer.json's post-processor adds (HfTokenizer.encode_prompt: transformers'
    `tokenizer(text)`, e.g. Llama 3's BOS); ours add nothing (their training documents follow
    an <eos>, never a <bos>). `added` marks the ids that are not text."""
    if tokenizer.kind == "hf":
        return tokenizer.encode_prompt(text)
    ids = tokenizer.encode(text)
    return ids, np.zeros(ids.shape, bool)


def stop_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The ids that end a generated text: an imported checkpoint's (generation_config.json's
    eos list, eos first), else eos."""
    return tokenizer.stop_ids if tokenizer.kind == "hf" else (tokenizer.eos_id,)


def heal_prompt(tokenizer: Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Token healing (Lundberg 2023, guidance; HF generate's token_healing): the prompt's ids
    (prompt_tokens: with the BOS a checkpoint's tokenizer adds) without its last token, and the
    mask of the ids whose bytes start with that token's bytes.

    A prompt that ends mid-token ("def " : BPE merges the space into the NEXT word, so a lone
    " " token is rare in training text) otherwise conditions the model on a split it has hardly
    seen; sampling the first new token from the mask lets it re-choose the boundary, and the
    text still begins with the prompt. Byte-level ids need no healing (one byte per token: the
    mask would hold only the removed byte), nor does a one-token prompt (nothing would be left;
    a BOS in front is enough), nor one that ends in a special token (no bytes to extend, or one
    the tokenizer appended). Returns (ids, None) when there is nothing to heal.
    """
    ids, added = prompt_tokens(tokenizer, text)
    if tokenizer.kind == "byte" or len(ids) < 2 or added[-1]:
        return ids, None
    pieces = tokenizer.token_bytes()
    tail = pieces[int(ids[-1])]
    if not tail:  # a special token written in the prompt ("<|im_end|>"): nothing to re-choose
        return ids, None
    allowed = np.array([len(p) > 0 and p.startswith(tail) for p in pieces], bool)
    return ids[:-1], allowed


def make_tokenizer(cfg: DataConfig, train_texts: list[str]) -> ByteTokenizer | BpeTokenizer:
    """The tokenizer `cfg.tokenizer` names; BPE is trained on `train_texts` (training split)."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if cfg.tokenizer == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=cfg.bpe_vocab_size)
    if cfg.tokenizer == "hf":
        raise DataError(
            "data.tokenizer='hf' is the tokenizer of an imported checkpoint; it is read from the "
            "run directory (`compactlm import HF_DIR workdir=RUN_DIR`), never trained"
        )
    raise DataError(f"unknown data.tokenizer {cfg.tokenizer!r}; valid: 'byte', 'bpe', 'hf'")


def load_tokenizer(directory: str | os.PathLike) -> ByteTokenizer | BpeTokenizer:
    """The tokenizer saved in `directory` (a run directory) by `save()`."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise DataError(f"no tokenizer saved in {str(directory)!r} (expected {path.name})")
    saved = json.loads(path.read_text(encoding="utf-8"))
    kind = saved.get("compactlm_tokenizer")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BpeTokenizer(HFTokenizer.from_str(json.dumps(saved["hf"])), saved["vocab_size"])
    if kind == "hf":
        return HfTokenizer.from_saved(saved)
    raise DataError(
        f"{path} is not a compactlm tokenizer (kind {kind!r}; valid: 'byte', 'bpe', 'hf')"
    )


def chmod_as_umask(path: str | os.PathLike) -> None:
    """Give `path` the mode a plain open() / mkdir() would have: 0o666 for a file, 0o777 for a
    directory, less the process umask (so 0644 / 0755 under umask 022).

    tempfile.mkstemp / mkdtemp create 0600 / 0700 on purpose (private scratch); a temporary that
    is renamed into place as a result (tokenizer.json, a token cache entry, an export) must end
    up as readable by others as the user's umask says, like every other file of a run.
    """
    # os.umask both sets and returns: set the most private mask for the instant in between, so a
    # file another thread creates meanwhile is never more open than intended.
    umask = os.umask(0o077)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and os.replace: never a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        chmod_as_umask(tmp)  # mkstemp's 0600 would make tokenizer.json private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
