"""Tokenizers to and from Hugging Face tokenizer.json: byte runs as a GPT-2 byte-level BPE with
no merges, BPE runs as themselves, `hf` runs read back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compactlm.config import Config
from compactlm.interop.hf_config import InteropError

HF_TOKENIZER = "tokenizer.json"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the alphabet of `ByteLevel` pre-tokenizers)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def hf_tokenizer_json(tokenizer: Any) -> str:
    """tokenizer.json for transformers: the same ids for the same bytes as `tokenizer`."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from compactlm.data.tokenizer import SPECIAL_TOKENS

    if tokenizer.kind == "hf":
        return tokenizer.hf_json()
    if tokenizer.kind == "byte":
        vocab = {ch: b for b, ch in bytes_to_unicode().items()}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
    else:  # bpe: our Hugging Face tokenizer, specials appended at n_base, n_base + 1, ...
        tok = HFTokenizer.from_str(tokenizer._tok.to_str())
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    ours = [tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id]  # SPECIAL_TOKENS' order
    theirs = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    if theirs != ours:  # transformers must see our ids, or generation stops at the wrong token
        raise InteropError(f"special tokens would get ids {theirs} instead of {ours}")
    return tok.to_str()


def _strip_specials(hf_json: str) -> str:
    from compactlm.data.tokenizer import SPECIAL_TOKENS

    data = json.loads(hf_json)
    data["added_tokens"] = [
        t for t in data.get("added_tokens", []) if t.get("content") not in SPECIAL_TOKENS
    ]
    return json.dumps(data)


def tokenizer_from_hf(hf_dir: Path, hf: Mapping[str, Any], cfg: Config) -> Any:
    """The compactlm tokenizer of an HF directory: ours back exactly, else an HfTokenizer."""
    from tokenizers import Tokenizer as HFTokenizer

    from compactlm.data.tokenizer import BpeTokenizer, ByteTokenizer, HfTokenizer

    path = hf_dir / HF_TOKENIZER
    if not path.is_file():
        extra = " (tokenizer.model / sentencepiece files need converting to tokenizer.json)"
        raise InteropError(
            f"no {HF_TOKENIZER} in {hf_dir}{extra if (hf_dir / 'tokenizer.model').exists() else ''}"
        )
    try:
        text = path.read_text(encoding="utf-8")
        hf_tok = HFTokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise InteropError(f"{path} is not a readable tokenizer.json ({e})") from e
    kind = (hf.get("compactlm") or {}).get("tokenizer")
    if kind == "byte" and cfg.data.tokenizer == "byte":
        probe = "héllo\t€\n"
        if hf_tok.encode(probe, add_special_tokens=False).ids != list(probe.encode("utf-8")):
            raise InteropError(f"{path} does not map bytes to ids 0..255 (a byte-level run's)")
        return ByteTokenizer()
    if kind == "bpe" and cfg.data.tokenizer == "bpe":
        return BpeTokenizer(HFTokenizer.from_str(_strip_specials(text)), cfg.data.bpe_vocab_size)

    def token_id(key: str, fallback: int | None) -> int:
        value = hf.get(key)
        if isinstance(value, list):  # Llama 3 instruct lists several eos ids; the first ends text
            value = value[0] if value else None
        if value is None:
            if fallback is None:
                raise InteropError(f"config.json has no {key} (needed to end sequences)")
            return fallback
        return int(value)

    eos = token_id("eos_token_id", None)
    try:
        return HfTokenizer(
            hf_tok,
            vocab_size=cfg.model.vocab_size,
            eos_id=eos,
            bos_id=token_id("bos_token_id", eos),
            pad_id=token_id("pad_token_id", eos),
        )
    except Exception as e:
        raise InteropError(f"{path}: {e}") from e
