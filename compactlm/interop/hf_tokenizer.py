"""Tokenizers to and from Hugging Face directories: tokenizer.json (byte runs as a GPT-2
byte-level BPE with no merges, BPE runs as themselves, `hf` runs read back), the special tokens
and stop ids of tokenizer_config.json / generation_config.json / config.json, and the chat
template, rendered as transformers' `apply_chat_template` renders it."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compactlm.config import Config
from compactlm.interop.hf_config import InteropError

HF_TOKENIZER = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_GENERATION_CONFIG = "generation_config.json"
HF_CHAT_TEMPLATE = "chat_template.jinja"  # where transformers >= 4.50's save_pretrained puts it
# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES): the strings tokenizer_config.json
# may name, and the variables a chat template sees besides `messages`
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


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


def _optional_json(path: Path) -> dict[str, Any]:
    """A JSON object file that a checkpoint may leave out ({} then); a broken one is an error."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise InteropError(f"{path} is not a JSON object")
    return data


def special_tokens(tok_cfg: Mapping[str, Any], hf_tok: Any, path: Path) -> dict[str, str]:
    """The named special tokens of tokenizer_config.json (`bos_token`, ...: a string, or an
    AddedToken as a dict with "content"). bos / eos / pad must be tokens of tokenizer.json (they
    become ids); the others are only strings a chat template may print."""
    out = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = tok_cfg.get(name)
        if isinstance(value, Mapping):
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str):
            raise InteropError(f"{path}: {name}={value!r} is not a token (a string)")
        if name in ("bos_token", "eos_token", "pad_token") and hf_tok.token_to_id(value) is None:
            raise InteropError(
                f"{path}: {name}={value!r} is not a token of {HF_TOKENIZER} (transformers would "
                "add it as a new id, one the model has no embedding for)"
            )
        out[name] = value
    return out


def chat_template(hf_dir: Path, tok_cfg: Mapping[str, Any]) -> str | None:
    """The checkpoint's chat template, as transformers picks it without tools: the
    chat_template.jinja file first (transformers gives it priority), else tokenizer_config.json's
    `chat_template`, a string or a list of {"name", "template"} whose "default" is used."""
    path = hf_dir / HF_CHAT_TEMPLATE
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise InteropError(f"{path} is not UTF-8 text ({e})") from e
    value = tok_cfg.get("chat_template")
    where = f"{hf_dir / HF_TOKENIZER_CONFIG}: chat_template"
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(t, Mapping) for t in value):
        named = {t.get("name"): t.get("template") for t in value}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise InteropError(
            f"{where} names templates {sorted(map(str, named))} but none 'default' "
            "(the one transformers renders without tools)"
        )
    raise InteropError(f"{where} is a {type(value).__name__}, not a string or a list of templates")


def _token_ids(value: Any, key: str, path: Path) -> list[int]:
    """A config's `*_token_id`: an int, a list of ints (Llama 3 instruct's eos), or null."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InteropError(f"{path}: {key}={value!r} is not a token id or a list of them")
    return values


def tokenizer_from_hf(hf_dir: Path, hf: Mapping[str, Any], cfg: Config) -> Any:
    """The compactlm tokenizer of an HF directory: ours back exactly, else an HfTokenizer.

    An HfTokenizer's ids follow transformers. bos / eos / pad: tokenizer_config.json's
    `bos_token` / `eos_token` / `pad_token`, mapped to ids by tokenizer.json (what transformers'
    tokenizer reports), else generation_config.json's `*_token_id`, else config.json's (bos and
    pad: else eos). Stop ids (where `generate` ends a text): eos, then every id of
    generation_config.json's `eos_token_id` (an int or a list: transformers' generate stops at
    any of them), else config.json's. The chat template: `chat_template` above. Whether a
    prompt gets a BOS is the tokenizer.json's own post-processor (HfTokenizer.encode_prompt).
    """
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

    tok_cfg_path, gen_path = hf_dir / HF_TOKENIZER_CONFIG, hf_dir / HF_GENERATION_CONFIG
    tok_cfg, gen = _optional_json(tok_cfg_path), _optional_json(gen_path)
    named = special_tokens(tok_cfg, hf_tok, tok_cfg_path)

    def config_ids(key: str) -> list[int]:
        """generation_config.json's ids under `key`, else config.json's."""
        ids = _token_ids(gen.get(key), key, gen_path)
        return ids or _token_ids(hf.get(key), key, hf_dir / "config.json")

    def token_id(name: str, fallback: int | None) -> int:
        if name in named:
            return hf_tok.token_to_id(named[name])
        ids = config_ids(f"{name}_id")
        if ids:  # a list (Llama 3 instruct's eos): its first id
            return ids[0]
        if fallback is None:
            raise InteropError(
                f"{hf_dir} names no eos token ({tok_cfg_path.name} eos_token, "
                f"{gen_path.name} or config.json eos_token_id): needed to end sequences"
            )
        return fallback

    eos = token_id("eos_token", None)
    try:
        return HfTokenizer(
            hf_tok,
            vocab_size=cfg.model.vocab_size,
            eos_id=eos,
            bos_id=token_id("bos_token", eos),
            pad_id=token_id("pad_token", eos),
            stop_ids=config_ids("eos_token_id"),
            chat_template=chat_template(hf_dir, tok_cfg),
            special_tokens=named,
        )
    except Exception as e:
        raise InteropError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Chat templates, rendered as transformers renders them
# ---------------------------------------------------------------------------------------------


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    special_tokens: Mapping[str, str],
    add_generation_prompt: bool = True,
) -> str:
    """The text transformers' `apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)` gives: the template sees `messages` (keys whose value is None
    dropped, as transformers does), `add_generation_prompt`, `tools` and `documents` (None) and
    the named special tokens (`bos_token`, ...: strings). Tokenize the result WITHOUT adding
    specials again (a template that wants a BOS renders `bos_token` itself); transformers'
    tokenize=True does the same. A template error (its own `raise_exception`, a syntax error,
    anything it raises) is an InteropError with the template's message, on one line.
    """
    import jinja2

    chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
    try:  # compiled once per template: the environment below
        return _compile_template(template).render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **special_tokens,
        )
    except jinja2.TemplateError as e:  # raise_exception's own message, or jinja's
        raise InteropError(f"chat template: {_one_line(e)}") from None
    except Exception as e:  # the template is the checkpoint's code: any failure is its input
        raise InteropError(f"chat template: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    """The message on one line (jinja's syntax errors span several)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or "(no message)"


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> Any:
    """A template compiled in transformers' environment: jinja2's ImmutableSandboxedEnvironment
    (a checkpoint's template is untrusted code: no private attributes, no mutating calls),
    trim_blocks + lstrip_blocks (block tags leave no newline or indentation), loop controls
    (`break` / `continue`), the `{% generation %}` tag (marks assistant text for transformers'
    assistant-token masks; here it renders its body), `raise_exception`, `strftime_now` and a
    `tojson` that neither escapes HTML nor non-ASCII (jinja2's own escapes both)."""
    return _environment().from_string(template)


@functools.cache
def _environment() -> Any:
    """transformers' jinja2 environment for chat templates (see _compile_template)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}`: the body, unchanged."""

        tags = {"generation"}

        def parse(self, parser: Any) -> list[Any]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(x: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:  # templates that print today's date (Llama 3.1)
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env
