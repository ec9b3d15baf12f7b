"""Write tiny random-weight Hugging Face checkpoints + transformers' own outputs as test fixtures.

Run BY HAND, in a separate dev venv with torch + transformers (never in CI; the tests that read
the fixtures need neither). See tests/fixtures/hf/README.md for the exact venv commands:

    python scripts/make_hf_fixtures.py            # all fixtures
    python scripts/make_hf_fixtures.py qwen2 gemma3_text   # some of them

Nothing is downloaded: every model is built from a config (`AutoModelForCausalLM.from_config`)
and every tokenizer is trained here, with the `tokenizers` library, on the small text below.

Per fixture directory under tests/fixtures/hf/<name>/:
  config.json, generation_config.json, model.safetensors   (model.save_pretrained, float32)
  tokenizer.json, tokenizer_config.json                    (AutoTokenizer.from_pretrained loads it)
  chat_template.jinja         (qwen3 only) the chat template, where 5.x's save_pretrained puts it;
                              the others keep theirs in tokenizer_config.json (smollm3: a list
                              of named templates)
  tokenizer_reference.json    transformers' tokenizer on a few texts (ids with / without specials),
                              its special tokens, generation_config's eos ids, and two chats
                              rendered by apply_chat_template (text, ids, the model's greedy
                              reply) + one it refuses
  config.transformers4.json   the same config in the transformers 4.x spelling
                              (rope_theta + rope_scaling [+ rope_local_base_freq]) when the
                              installed transformers writes the 5.x one (rope_parameters)
  reference.npz               input_ids [2, T], logits [2, T, V] float32 (eager attention),
                              greedy_prompt [1, P], greedy_tokens [1, N], greedy_logits [1, N, V]
                              (the raw logits of each cached decode step), transformers_version

Every norm weight is random and non-unit (gemma's (1 + w) norms: w random and non-zero), every
bias random and non-zero, so a swapped norm or a dropped bias changes the logits. After writing,
each directory is reloaded with from_pretrained and its logits / greedy tokens are checked
against the saved ones (the fixture is self-consistent), and the 4.x-spelled config is checked
to give the same logits too. The tokenizer reference is made by the reloaded tokenizer, which
must give back the chat template as written.
"""

# ruff: noqa: E501  (the README template has Markdown table rows)

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2
import numpy as np
import torch
import transformers
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hf"

T = 24  # reference sequence length (gemma3's sliding window is 8 < T)
P = 12  # greedy prompt length: P + N > sliding window, so the cached decode crosses it too
N = 8  # greedy new tokens
CHAT_NEW_TOKENS = 4  # greedy reply recorded per chat conversation (`generate chat=true`)

# The training text of every tokenizer (a few hundred merges' worth) and the texts encoded for
# the references. The second reference text has characters the training text lacks ("é", "ß",
# "→"), so the byte-level tokenizers emit raw byte tokens and gemma's uses its byte fallback.
TRAIN_TEXT = (
    """\
The quick brown fox jumps over the lazy dog. A small language model reads the text one token
at a time and predicts the next token from the ones before it. Attention lets every position
look back at earlier positions; the keys and values of those positions are kept in a cache
while the model generates new tokens, so that each step costs only one new position.
Rotary position embeddings rotate the queries and the keys by an angle that grows with the
position, and the rate of each pair of channels is set by the base of the rotation. Some models
scale the low frequencies for long contexts; some leave the rotation out of a few layers.
Normalisation layers rescale each vector by the root of its mean square and multiply it by a
learned weight. The feed forward block gates one projection by another and projects back down.
Tokenizers split the text into pieces: bytes, then merges of frequent pairs of pieces, until
the vocabulary is full. Numbers like 12, 345 and 6789 appear too, and so do punctuation marks:
commas, colons; question marks? and exclamation marks! Quotes "like these" and 'these' as well.
def forward(self, x): return self.norm(x + self.attention(x)) # code is text as well
"""
    * 2
)

REF_TEXTS = [
    "The model reads the text one token at a time, and the cache keeps the keys and values "
    "of the earlier positions while it generates.",
    "Café Straße → naïve tokens: 42 merges, bytes and a fallback; the quick brown fox jumps "
    "over the lazy dog again and again.",
]


# --------------------------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------------------------


def byte_level_bpe(vocab_size: int, specials: list[str], bos: str | None) -> Tokenizer:
    """A GPT-2 / Llama 3 / Qwen style byte-level BPE; special tokens appended after the merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN_TEXT.splitlines(keepends=True), trainer=trainer)
    tok.add_special_tokens(specials)
    if bos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    return tok


def gemma_bpe(n_pieces: int) -> Tokenizer:
    """A Gemma-style BPE: spaces → '▁' in the normalizer, no pre-tokenizer, byte fallback to
    <0x00>..<0xFF>, decoder Replace('▁', ' ') + ByteFallback + Fuse; <pad>=0 <eos>=1 <bos>=2
    <unk>=3, then the 256 byte tokens, then the trained pieces; <bos> prepended."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # Train the pieces (characters + merges) on the '▁'-normalised text.
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=n_pieces, show_progress=False)
    t.train_from_iterator(TRAIN_TEXT.splitlines(), trainer=trainer)
    trained = json.loads(t.to_str())["model"]
    pieces = sorted(trained["vocab"], key=trained["vocab"].get)
    vocab = {}
    for s in specials + byte_tokens + pieces:
        if s not in vocab:
            vocab[s] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return tok


def save_tokenizer(
    tok: Tokenizer, directory: Path, special: dict[str, str], chat: dict
) -> PreTrainedTokenizerFast:
    """tokenizer.json + tokenizer_config.json (+ chat_template.jinja), as save_pretrained writes
    them; `chat["store"]` says where the chat template goes (CHAT_STORES)."""
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.chat_template = chat["template"]
    # save_jinja_files=True is 5.x's default: a single template goes to chat_template.jinja;
    # False keeps the older layout, the template (or a list of named ones) in tokenizer_config.
    fast.save_pretrained(str(directory), save_jinja_files=chat["store"] == "jinja")
    # Name the class every transformers version knows (5.x writes its own "TokenizersBackend",
    # which 4.x lacks); the self-check reloads it with AutoTokenizer.
    path = directory / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("backend", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    stored = "chat_template" in cfg, (directory / "chat_template.jinja").exists()
    assert stored == {"jinja": (False, True)}.get(chat["store"], (True, False)), stored
    return fast


# --------------------------------------------------------------------------------------------
# chat templates (small ones in the style of each family's own; written here, not copied)
# --------------------------------------------------------------------------------------------

# Where a fixture keeps its template, the three layouts transformers reads: "config" a string
# under tokenizer_config.json's chat_template, "named" a list of {"name", "template"} there
# ("default" is the one used without tools), "jinja" the chat_template.jinja file 5.x writes.
CHAT_STORES = {
    "config": "`tokenizer_config.json`",
    "named": "`tokenizer_config.json`, named (default, tool_use)",
    "jinja": "`chat_template.jinja`",
}

# ChatML (Qwen2.5 style): a default system turn, tool calls rendered with `tojson` (transformers'
# own filter: no HTML escaping, non-ASCII kept), consecutive tool results in one user turn
# (loop.previtem / nextitem), `continue` past the system message, raise_exception on other roles.
CHATML_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if loop.first and message.role == 'system' %}
        {%- continue %}
    {%- endif %}
    {%- if message.role not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('Unexpected role ' + message.role + ': valid roles are system (first), user, assistant and tool') }}
    {%- endif %}
    {%- if message.role == 'tool' %}
        {%- if loop.previtem is not defined or loop.previtem.role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.nextitem is not defined or loop.nextitem.role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- else %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for call in message.tool_calls | default([]) %}
            {{- '\\n<tool_call>\\n{"name": "' + call.function.name + '", "arguments": ' }}
            {{- call.function.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# SmolLM3 style: ChatML with a metadata system block, reasoning off (/no_think: the generation
# prompt holds an empty think block), earlier assistant turns stripped of their <think> part
# (the last user turn is found by a reversed loop that stops at `break`), assistant text inside
# `{% generation %}` (transformers' tag for assistant-token masks: it must parse and render as
# its body), a `namespace`, and raise_exception on a misplaced system message.
SMOLLM3_TEMPLATE = """\
{%- set ns = namespace(system='You are a helpful AI assistant named SmolLM.', last_user=-1) -%}
{%- for message in messages | reverse -%}
    {%- if message.role == 'user' -%}
        {%- set ns.last_user = (messages | length) - 1 - loop.index0 -%}
        {%- break -%}
    {%- endif -%}
{%- endfor -%}
{%- if messages[0].role == 'system' -%}
    {%- set ns.system = messages[0].content | trim -%}
{%- endif -%}
<|im_start|>system
## Metadata

Reasoning Mode: /no_think

## Custom Instructions

{{ ns.system }}<|im_end|>
{% for message in messages -%}
    {%- if message.role == 'system' -%}
        {%- if not loop.first -%}
            {{- raise_exception('The system message must be the first message') -}}
        {%- endif -%}
    {%- elif message.role == 'user' -%}
<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' -%}
        {%- set content = message.content -%}
        {%- if loop.index0 < ns.last_user and '</think>' in content -%}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') -%}
        {%- endif -%}
<|im_start|>assistant
{% generation %}{{ content }}<|im_end|>{% endgeneration %}

{% else -%}
        {{- raise_exception('Unexpected role ' + message.role) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
<think>

</think>
{% endif -%}
"""

# The "tool_use" entry of smollm3's named templates: transformers picks it only when tools are
# passed, so a reader that ignores the names would render this instead of "default".
SMOLLM3_TOOL_TEMPLATE = "{{ raise_exception('tool_use template: no tools in these fixtures') }}"

# Llama 3 style: `bos_token` rendered by the template (apply_chat_template then tokenizes without
# adding specials, so BOS appears once), header markers, contents trimmed. Plain `{% %}` tags on
# indented lines of their own: only trim_blocks + lstrip_blocks (transformers' settings) keep
# the indentation and the tags' newlines out of the text. (<|start_header_id|> and friends are
# plain text here: the fixture's tokenizer.json has no such added tokens.)
LLAMA3_TEMPLATE = """\
{{ bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] | trim %}
{% else %}
    {% set system = 'Cutting Knowledge Date: December 2023' %}
{% endif %}
<|start_header_id|>system<|end_header_id|>

{{ system }}<|eot_id|>
{% for message in messages %}
    {% if loop.first and message['role'] == 'system' %}
        {% continue %}
    {% endif %}
    {% if message['role'] not in ('user', 'assistant') %}
        {{ raise_exception('Llama 3 roles are system, user and assistant, not ' ~ message['role']) }}
    {% endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
"""

# Gemma 3 style: `bos_token` first, the system message folded into the first user turn,
# "assistant" shown as "model", turns that must alternate (raise_exception, counted in a
# `namespace` because `continue` skips the system message).
GEMMA3_TEMPLATE = """\
{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
{%- else -%}
    {%- set first_user_prefix = '' -%}
{%- endif -%}
{%- set ns = namespace(turn=0) -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] == 'system' -%}
        {%- continue -%}
    {%- endif -%}
    {%- if (message['role'] == 'user') != (ns.turn % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif -%}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if ns.turn == 0 else '') }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
    {%- set ns.turn = ns.turn + 1 -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\\n' }}
{%- endif -%}
"""

# The conversations recorded in tokenizer_reference.json: a multi-turn one with a system
# message, a single user turn (leading space, non-ASCII, emoji), and one the template refuses.
SYSTEM = {"role": "system", "content": "You answer in one short sentence. "}
TURNS = [
    {"role": "user", "content": "What does the cache keep?"},
    {
        "role": "assistant",
        "content": "<think>\nKeys, values.\n</think>\n\nThe keys and values of earlier positions.",
    },
    {"role": "user", "content": " And for a café → naïve Straße? "},
]
SINGLE = [{"role": "user", "content": " Grüße, 日本語 and 🎉 in one line\nand a second line"}]
TOOL_TURNS = [  # ChatML's tool calls: `tojson` of arguments with <, &, ' and non-ASCII
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "arguments": {"city": "Zürich", "note": "<b> & 'quoted'", "days": 2},
                },
            }
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"rain": false}'},
    {"role": "assistant", "content": "21 °C, dry."},
    {"role": "user", "content": "Thanks!"},
]
CHATML_CHAT = dict(
    style="ChatML",
    template=CHATML_TEMPLATE,
    chats=[[SYSTEM, *TURNS, *TOOL_TURNS[1:]], SINGLE],
    refused=[{"role": "robot", "content": "beep"}],
)

LLAMA3_CHAT = dict(
    style="Llama 3",
    template=LLAMA3_TEMPLATE,
    chats=[[SYSTEM, *TURNS], SINGLE],
    refused=[*TURNS[:1], {"role": "robot", "content": "beep"}],
)
SMOLLM3_CHAT = dict(
    style="SmolLM3",
    template={"default": SMOLLM3_TEMPLATE, "tool_use": SMOLLM3_TOOL_TEMPLATE},
    chats=[[SYSTEM, *TURNS], SINGLE],
    refused=[*TURNS[:1], SYSTEM],
)
GEMMA3_CHAT = dict(
    style="Gemma 3",
    template=GEMMA3_TEMPLATE,
    chats=[[SYSTEM, *TURNS], SINGLE],
    refused=[SYSTEM, *TURNS[:1], *TURNS[:1]],
)

# Texts whose ids tokenizer_reference.json records, with and without the tokenizer's specials:
# a leading / trailing space, non-ASCII (byte tokens; gemma's byte fallback), newlines and tabs,
# and the family's eos token written out (an added token: matched in the text, not split).
TOKENIZER_TEXTS = [
    "Hello world",
    " leading and trailing spaces ",
    REF_TEXTS[1],
    "日本語 🎉\tand tabs\nnew lines\n\n",
    "a literal {eos} inside the text",
]


# --------------------------------------------------------------------------------------------
# families
# --------------------------------------------------------------------------------------------

# Small widths everywhere: hidden 32, 4 heads of 8 (qwen3 / gemma3: of 16), 2 kv heads (GQA),
# intermediate 64. The model vocab is a bit larger than the tokenizer's (as in Qwen / Gemma).

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SMOLLM3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|finetune_right_pad_id|>",
]

COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)


QWEN_SPECIAL = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
LLAMA3_SPECIAL = dict(
    bos_token="<|begin_of_text|>",
    eos_token="<|end_of_text|>",
    pad_token="<|finetune_right_pad_id|>",
)


def token_ids(special: dict, **extra: str) -> dict:
    """config.json's `<name>_id` keys (as token strings) for the special tokens, plus extras."""
    return {f"{name}_id": token for name, token in special.items()} | extra


def fixture_specs() -> dict[str, dict]:
    """name → how to build it: tokenizer, config kwargs, what it exercises (for the README)."""
    return {
        "qwen2": dict(
            model_type="qwen2",
            tokenizer=lambda: byte_level_bpe(448, QWEN_SPECIALS, bos=None),
            special=QWEN_SPECIAL,
            ids=token_ids(QWEN_SPECIAL, bos_token_id="<|endoftext|>"),
            chat=dict(CHATML_CHAT, store="config"),
            config=dict(
                COMMON,
                num_hidden_layers=2,
                vocab_size=464,
                tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            covers="Qwen2: q/k/v projection biases (random, non-zero), untied lm_head, GQA 4/2, "
            "byte-level BPE without BOS, rope_theta 1e6, model vocab > tokenizer vocab.",
        ),
        "qwen3": dict(
            model_type="qwen3",
            tokenizer=lambda: byte_level_bpe(448, QWEN_SPECIALS, bos=None),
            special=QWEN_SPECIAL,
            ids=token_ids(QWEN_SPECIAL, bos_token_id="<|endoftext|>"),
            chat=dict(CHATML_CHAT, store="jinja"),
            config=dict(
                COMMON,
                num_hidden_layers=2,
                vocab_size=464,
                head_dim=16,
                tie_word_embeddings=True,
                attention_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            ),
            covers="Qwen3: per-head q_norm / k_norm (random non-unit), "
            "head_dim 16 != hidden/heads 8 (q_proj 32→64, o_proj 64→32), no attention bias, "
            "tied embeddings.",
        ),
        "llama3": dict(
            model_type="llama",
            tokenizer=lambda: byte_level_bpe(448, LLAMA3_SPECIALS, bos="<|begin_of_text|>"),
            special=LLAMA3_SPECIAL,
            ids=token_ids(LLAMA3_SPECIAL),
            chat=dict(LLAMA3_CHAT, store="config"),
            config=dict(
                COMMON,
                num_hidden_layers=2,
                vocab_size=456,
                tie_word_embeddings=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 256,
                },
            ),
            covers="Llama 3.2 style: rope_scaling of type llama3 (theta 5e5, factor 8, "
            "low/high freq factor 1/4, original max positions 256: with head_dim 8 the four rotary "
            "frequencies have wavelengths 6.3 (kept), 167 (smoothed), 4.4e3 and 1.2e5 "
            "(divided by 8), so every branch of the scaling shows), BOS prepended by the "
            "tokenizer, tied embeddings. config.transformers4.json spells it rope_theta + "
            "rope_scaling.",
        ),
        "llama3_untied": dict(
            model_type="llama",
            tokenizer=lambda: byte_level_bpe(448, LLAMA3_SPECIALS, bos="<|begin_of_text|>"),
            special=LLAMA3_SPECIAL,
            ids=token_ids(LLAMA3_SPECIAL),
            chat=dict(LLAMA3_CHAT, store="config"),
            config=dict(
                COMMON,
                num_hidden_layers=2,
                vocab_size=456,
                tie_word_embeddings=False,
                attention_bias=True,
                mlp_bias=True,
                rope_parameters={
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 256,
                },
            ),
            covers="Llama with llama3 rope as llama3, but untied lm_head and attention_bias + "
            "mlp_bias true (biases on q/k/v/o and gate/up/down).",
        ),
        "smollm3": dict(
            model_type="smollm3",
            tokenizer=lambda: byte_level_bpe(448, SMOLLM3_SPECIALS, bos=None),
            special=LLAMA3_SPECIAL,
            ids=token_ids(LLAMA3_SPECIAL),
            chat=dict(SMOLLM3_CHAT, store="named"),
            config=dict(
                COMMON,
                num_hidden_layers=3,
                vocab_size=464,
                tie_word_embeddings=True,
                no_rope_layer_interval=3,
                rope_parameters={"rope_type": "default", "rope_theta": 2000000.0},
            ),
            covers="SmolLM3: no_rope_layers [1, 1, 0] (the 3rd layer has no rotary embedding), "
            "rope_theta 2e6, tied embeddings, no BOS added by the tokenizer.",
        ),
        "gemma3_text": dict(
            model_type="gemma3_text",
            tokenizer=lambda: gemma_bpe(200),
            special=dict(
                bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
            ),
            ids=dict(bos_token_id="<bos>", eos_token_id="<eos>", pad_token_id="<pad>"),
            chat=dict(GEMMA3_CHAT, store="config"),
            config=dict(
                COMMON,
                num_hidden_layers=3,
                vocab_size=480,
                head_dim=16,
                tie_word_embeddings=True,
                query_pre_attn_scalar=24,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                hidden_activation="gelu_pytorch_tanh",
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            ),
            covers="Gemma 3 text: sliding window 8 < T = 24 (and < P + N) on layers 0 and 2, full "
            "attention on layer 1 (layer_types; the 4.x copy also says "
            "sliding_window_pattern 2), query_pre_attn_scalar 24 != head_dim 16, sandwich "
            "norms (input / post_attention / pre_feedforward / post_feedforward), (1 + w) "
            "RMSNorms with random w (q_norm / k_norm too), GeGLU (gelu tanh), embeddings "
            "scaled by sqrt(hidden), global rope base 1e6 vs local 1e4 "
            "(rope_local_base_freq in the 4.x copy), tied embeddings; a Gemma-style "
            "BPE tokenizer with byte fallback (the second reference text hits it) and BOS.",
        ),
    }


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise(model: torch.nn.Module, gemma: bool, seed: int) -> None:
    """Well-scaled random weights; random non-unit norms; random non-zero biases."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    for name, module in model.named_modules():
        cls = type(module).__name__
        if "RMSNorm" in cls or "LayerNorm" in cls:
            w = module.weight
            # gemma's norms are x * (1 + w), initialised at w = 0
            w.copy_(normal(w.shape, 0.1) if gemma else normal(w.shape, 0.1, 1.0))
            if getattr(module, "bias", None) is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, torch.nn.Linear) and not (
            name == "lm_head" and model.config.tie_word_embeddings
        ):
            # o_proj / down_proj (and an untied lm_head) larger, so that the layers' output is not
            # swamped by the token's own embedding (a tied model then greedily repeats its last
            # token) and so that the logits have margins well above float32 noise
            gain = 3.0 if name.endswith(("o_proj", "down_proj", "lm_head")) else 1.0
            module.weight.copy_(normal(module.weight.shape, gain * module.in_features**-0.5))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, torch.nn.Embedding):
            # gemma multiplies the embeddings by sqrt(hidden) = 5.7 and its post-norms give each
            # layer's output unit scale: a small std keeps its (tied) model from predicting the
            # input token back at every position
            module.weight.copy_(normal(module.weight.shape, 0.1 if gemma else 1.0))
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def to_transformers4(cfg: dict) -> dict:
    """The 5.x config.json spelling → the 4.x one (rope_theta + rope_scaling; gemma3:
    rope_local_base_freq + sliding_window_pattern; torch_dtype)."""
    cfg = copy.deepcopy(cfg)
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    rp = cfg.pop("rope_parameters", None)
    if rp is None:
        return cfg

    def split(p):
        p = dict(p)
        theta = p.pop("rope_theta")
        return theta, (None if p.get("rope_type", "default") == "default" else p)

    if "full_attention" in rp:  # gemma3 style: one set of rope parameters per layer type
        cfg["rope_theta"], cfg["rope_scaling"] = split(rp["full_attention"])
        cfg["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    else:
        cfg["rope_theta"], cfg["rope_scaling"] = split(rp)
    if "_sliding_window_pattern" in cfg:
        cfg["sliding_window_pattern"] = cfg.pop("_sliding_window_pattern")
    return cfg


def build(name: str, spec: dict, directory: Path, seed: int) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    # tokenizer
    tok = spec["tokenizer"]()
    fast = save_tokenizer(tok, directory, spec["special"], spec["chat"])
    n_tok = len(fast)
    ids = {k: tok.token_to_id(v) for k, v in spec["ids"].items()}

    # model
    kw = dict(spec["config"])
    assert kw["vocab_size"] >= n_tok, (name, kw["vocab_size"], n_tok)
    extra = {}
    if spec["model_type"] == "gemma3_text":
        extra["sliding_window_pattern"] = 2
    config = AutoConfig.for_model(spec["model_type"], **kw, **ids, **extra)
    if spec["model_type"] == "gemma3_text":
        assert config.layer_types == kw["layer_types"], config.layer_types
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    randomise(model, gemma=spec["model_type"].startswith("gemma"), seed=seed)
    try:
        model.save_pretrained(str(directory), safe_serialization=True)
    except TypeError:  # transformers versions that dropped the argument (safetensors only)
        model.save_pretrained(str(directory))
    assert (directory / "model.safetensors").exists()

    cfg = json.loads((directory / "config.json").read_text())
    if "rope_parameters" in cfg:  # 5.x spelling written: add the 4.x one
        (directory / "config.transformers4.json").write_text(
            json.dumps(to_transformers4(cfg), indent=2) + "\n"
        )

    # references
    enc = [fast(t)["input_ids"] for t in REF_TEXTS]
    assert all(len(e) >= T for e in enc), [len(e) for e in enc]
    input_ids = torch.tensor([e[:T] for e in enc], dtype=torch.long)
    specials_ids = {ids["pad_token_id"]}
    assert not any(i in specials_ids for i in input_ids.flatten().tolist()), (
        "padding inside input_ids"
    )
    with torch.no_grad():
        logits = model(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids)
        ).logits.float()
    prompt = input_ids[:1, :P]
    with torch.no_grad():
        gen = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            use_cache=True,
            max_new_tokens=N,
            pad_token_id=ids["pad_token_id"],
            return_dict_in_generate=True,
            output_logits=True,
        )
    out = gen.sequences
    new = out[:, P:]
    greedy_logits = torch.stack(gen.logits, dim=1).float()  # [1, N, V], raw, from the cached decode
    assert new.shape == (1, N), f"{name}: generation stopped early at {new.shape} (eos?)"
    np.savez(
        directory / "reference.npz",
        input_ids=input_ids.numpy().astype(np.int64),
        logits=logits.numpy().astype(np.float32),
        greedy_prompt=prompt.numpy().astype(np.int64),
        greedy_tokens=new.numpy().astype(np.int64),
        greedy_logits=greedy_logits.numpy().astype(np.float32),
        transformers_version=np.array(transformers.__version__),
    )
    self_check(name, directory)
    write_tokenizer_reference(name, spec, directory, model)


# The multimodal Gemma 3 layout (Gemma3ForConditionalGeneration): its text tower is gemma3_text/
# itself, so only what transformers writes around it is committed (2 MB budget): config.json and
# layout.json (every tensor's name, shape and dtype in model.safetensors, and which text tensor
# each text-tower name is). The tests rebuild model.safetensors from gemma3_text/'s tensors.
MULTIMODAL = "gemma3"
TINY_VISION = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
)


@torch.no_grad()
def build_multimodal(text_dir: Path, directory: Path) -> None:
    """gemma3/: config.json + layout.json of a Gemma3ForConditionalGeneration whose language
    model is gemma3_text/'s, checked to give gemma3_text/'s reference logits on text."""
    from safetensors.numpy import load_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    text = AutoModelForCausalLM.from_pretrained(
        str(text_dir), attn_implementation="eager", dtype=torch.float32
    )
    text_cfg = text.config.to_dict()
    ids = {k: text_cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = Gemma3Config(
        text_config=text_cfg, vision_config=TINY_VISION, mm_tokens_per_image=4, **ids
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration._from_config(
        config, attn_implementation="eager", dtype=torch.float32
    )
    model.model.language_model.load_state_dict(text.model.state_dict())
    model.eval()
    ref = np.load(text_dir / "reference.npz")
    logits = model(input_ids=torch.from_numpy(ref["input_ids"])).logits.float().numpy()
    diff = float(np.abs(logits - ref["logits"]).max())
    assert diff < 1e-5, f"gemma3: the text tower's logits differ from gemma3_text's by {diff}"
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "config.json", directory / "config.json")
        saved = load_file(str(Path(tmp) / "model.safetensors"))
    ours = load_file(str(text_dir / "model.safetensors"))
    layout = {}
    for name, w in sorted(saved.items()):
        text_name = None
        for prefix in ("language_model.model.", "model.language_model."):
            if name.startswith(prefix):
                text_name = "model." + name.removeprefix(prefix)
                np.testing.assert_array_equal(w, ours[text_name])
        layout[name] = {"shape": list(w.shape), "dtype": str(w.dtype), "text": text_name}
    assert sum(v["text"] is not None for v in layout.values()) == len(ours), "text tower"
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in layout.items())
    (directory / "layout.json").write_text("{\n" + lines + "\n}\n")
    print(f"{MULTIMODAL}: text logits = gemma3_text's within {diff:.2g}; {len(layout)} tensors")


def write_tokenizer_reference(name: str, spec: dict, directory: Path, model) -> None:
    """tokenizer_reference.json: what transformers' tokenizer, loaded from the written directory
    (AutoTokenizer, as a user would), gives for TOKENIZER_TEXTS and the family's conversations,
    the special tokens it reports, generation_config's eos ids (where generate stops), and the
    model's greedy reply to each conversation."""
    tok = AutoTokenizer.from_pretrained(str(directory))
    want = spec["chat"]["template"]
    assert tok.chat_template == want, f"{name}: the chat template did not load back as written"
    texts = [t.format(eos=tok.eos_token) for t in TOKENIZER_TEXTS]
    chats = []
    for messages in spec["chat"]["chats"]:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        # what the tests rely on: tokenize=True is the rendered text without added specials
        assert ids == tok(text, add_special_tokens=False)["input_ids"], name
        prompt = torch.tensor([ids])
        with torch.no_grad():  # generation_config.json's eos ids end it early
            out = model.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=CHAT_NEW_TOKENS,
                pad_token_id=tok.pad_token_id,
            )
        reply = out[0, len(ids) :].tolist()
        chats.append({"messages": messages, "text": text, "input_ids": ids, "greedy_reply": reply})
    refused = spec["chat"]["refused"]
    try:
        tok.apply_chat_template(refused, tokenize=False, add_generation_prompt=True)
        raise AssertionError(f"{name}: the template accepted {refused}")
    except jinja2.exceptions.TemplateError as e:
        error = str(e)
    eos = GenerationConfig.from_pretrained(str(directory)).eos_token_id
    # transformers 5 may pick a class by model_type over tokenizer_class (qwen2: Qwen2Tokenizer,
    # whose own pre-tokenizer regex and unk_token default replace the file's): the recorded ids
    # must still be those of tokenizer.json itself, or they would record that swap, not the file
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for t in texts:
        for specials in (True, False):
            got = tok(t, add_special_tokens=specials)["input_ids"]
            assert got == raw.encode(t, add_special_tokens=specials).ids, (name, t, specials)
    for chat in chats:
        assert chat["input_ids"] == raw.encode(chat["text"], add_special_tokens=False).ids, name
    ref = {
        "transformers_version": transformers.__version__,
        # tokenizer.special_tokens_map: the named tokens (strings) a chat template sees
        "special_tokens": tok.special_tokens_map,
        **{f"{n}_token_id": getattr(tok, f"{n}_token_id") for n in ("bos", "eos", "pad", "unk")},
        "generation_eos_token_ids": eos if isinstance(eos, list) else [eos],
        "texts": [
            {
                "text": t,
                "input_ids": tok(t)["input_ids"],
                "input_ids_no_specials": tok(t, add_special_tokens=False)["input_ids"],
            }
            for t in texts
        ],
        "chats": chats,
        "refused_chat": {"messages": refused, "error": error},
    }
    text = json.dumps(ref, indent=2, ensure_ascii=False)
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # ids
    (directory / "tokenizer_reference.json").write_text(text + "\n", encoding="utf-8")


def self_check(name: str, directory: Path) -> None:
    """Reload the directory with transformers alone and compare with the saved references."""
    ref = np.load(directory / "reference.npz")
    tok = AutoTokenizer.from_pretrained(str(directory))
    enc = [tok(t)["input_ids"][:T] for t in REF_TEXTS]
    assert np.array_equal(np.array(enc), ref["input_ids"]), f"{name}: tokenizer reload differs"
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    ids = torch.from_numpy(ref["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()
    assert np.array_equal(logits, ref["logits"]), (
        f"{name}: reloaded logits differ (max |d| {np.abs(logits - ref['logits']).max()})"
    )
    prompt = torch.from_numpy(ref["greedy_prompt"])
    with torch.no_grad():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            use_cache=True,
            max_new_tokens=N,
            pad_token_id=model.config.pad_token_id,
        )
    assert np.array_equal(out[:, prompt.shape[1] :].numpy(), ref["greedy_tokens"]), (
        f"{name}: greedy differs"
    )
    # greedy continuation = argmax of a no-cache forward, token by token (the cache path agrees)
    seq, steps = prompt, []
    with torch.no_grad():
        for _ in range(N):
            last = model(input_ids=seq).logits[:, -1].float()
            steps.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    assert np.array_equal(seq[:, prompt.shape[1] :].numpy(), ref["greedy_tokens"]), (
        f"{name}: no-cache greedy differs"
    )
    nocache = torch.stack(steps, dim=1).numpy()
    assert np.allclose(nocache, ref["greedy_logits"], atol=1e-4, rtol=1e-4), (
        f"{name}: cached decode logits "
        f"differ from no-cache ones (max |d| {np.abs(nocache - ref['greedy_logits']).max()})"
    )
    top2 = np.sort(ref["greedy_logits"], axis=-1)[..., -2:]
    margin = float((top2[..., 1] - top2[..., 0]).min())

    # the 4.x-spelled config describes the same model (as the installed transformers reads it)
    alt = directory / "config.transformers4.json"
    if alt.exists():
        with tempfile.TemporaryDirectory() as tmp:
            for f in directory.iterdir():
                if f.name != "config.json":
                    os.symlink(f, Path(tmp) / f.name)
            shutil.copy(alt, Path(tmp) / "config.json")
            m4 = AutoModelForCausalLM.from_pretrained(
                tmp, attn_implementation="eager", dtype=torch.float32
            )
            m4.eval()
            with torch.no_grad():
                l4 = m4(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().numpy()
            assert np.array_equal(l4, ref["logits"]), (
                f"{name}: 4.x config gives other logits "
                f"(max |d| {np.abs(l4 - ref['logits']).max()})"
            )
    logit_std = float(ref["logits"].std())
    print(
        f"  {name}: ok  tokenizer {len(tok)}  vocab {ref['logits'].shape[-1]}  "
        f"logits std {logit_std:.2f}  "
        f"greedy {ref['greedy_tokens'].tolist()[0]}  min top-2 margin {margin:.3f}"
    )


README = """\
# Hugging Face fixtures (made by transformers, read without it)

Tiny random-weight checkpoints and transformers' own outputs for them, written by
`scripts/make_hf_fixtures.py` (this README too). The tests read these files with NumPy and
safetensors only; neither torch nor transformers is needed to run them, and CI never runs the
script.

Made with: transformers {transformers}, torch {torch}, tokenizers {tokenizers},
safetensors {safetensors}, numpy {numpy}, Python {python}.

## Regenerate (by hand, in a dev venv outside the repository)

```bash
PYENV_VERSION=3.11.7 python -m venv /work/devvenv
/work/devvenv/bin/pip install torch==2.13.0        # the CPU wheel; no other version
/work/devvenv/bin/pip install transformers safetensors tokenizers numpy
/work/devvenv/bin/pip list | grep -i torch          # still 2.13.0+cpu
/work/devvenv/bin/python scripts/make_hf_fixtures.py            # all fixtures
/work/devvenv/bin/python scripts/make_hf_fixtures.py qwen3      # or some of them
```

Nothing is downloaded: models come from configs (`AutoModelForCausalLM.from_config`),
tokenizers are trained by the script on a small embedded text. The output is deterministic
(fixed seeds). The script ends with a self-check per directory: the tokenizer reloads with
`AutoTokenizer` and gives the same ids; the model reloads with `from_pretrained` and gives
bit-identical logits and the same greedy tokens (also token by token without the cache, whose
logits match `greedy_logits` within 1e-4); `config.transformers4.json` in place of
`config.json` gives bit-identical logits (as the installed transformers reads it); the
reloaded tokenizer gives back the chat template as written, and its `apply_chat_template`
(tokenize=True) ids are those of the rendered text without added specials; the total stays
under 2 MB.

## Files per fixture directory

| file | what |
| --- | --- |
| `config.json`, `generation_config.json`, `model.safetensors` | `model.save_pretrained`, float32, as the installed transformers writes them ({gen} spelling: {spelling}) |
| `config.transformers4.json` | (written when the installed transformers writes the 5.x spelling) the same config in the transformers 4.x spelling (`rope_theta` + `rope_scaling`, gemma3: + `rope_local_base_freq`, `sliding_window_pattern`; `torch_dtype`), translated by the script |
| `tokenizer.json`, `tokenizer_config.json` | `PreTrainedTokenizerFast.save_pretrained` (bos / eos / pad tokens; `tokenizer_class` PreTrainedTokenizerFast; `chat_template`: a string, or a list of `{{"name", "template"}}` where "default" is the one used) |
| `chat_template.jinja` | (qwen3) the chat template as a file, where 5.x's `save_pretrained` puts it by default (transformers reads it before tokenizer_config's) |
| `tokenizer_reference.json` | transformers' tokenizer, reloaded from the directory with `AutoTokenizer`: `texts` (`tokenizer(text).input_ids` and with `add_special_tokens=False`; a leading space, non-ASCII, newlines, the eos token written out), `special_tokens` (`special_tokens_map`: the strings a template sees), `bos/eos/pad/unk_token_id` (null: none), `generation_eos_token_ids` (`GenerationConfig.from_pretrained`: where generate stops), `chats` (two conversations, one multi-turn with a system message, the other one user message: `apply_chat_template(add_generation_prompt=True)` text, ids with tokenize=True, and `greedy_reply`, the model's `generate(do_sample=False, max_new_tokens={chat_new})` after those ids, ending early at an eos id), `refused_chat` (a conversation the template's `raise_exception` rejects, and the message) |
| `reference.npz` | `input_ids` [2, {T}] int64 (two fixed texts, truncated to {T}, no padding), `logits` [2, {T}, V] float32 (full forward, eager attention, float32), `greedy_prompt` [1, {P}] (the first {P} ids of text 0), `greedy_tokens` [1, {N}] (`generate(do_sample=False, use_cache=True)`), `greedy_logits` [1, {N}, V] float32 (the raw logits of each cached decode step), `transformers_version` |

All norm weights are random and non-unit (gemma's `(1 + w)` norms: `w ~ 0.1·N(0, 1)`, the
others `1 + 0.1·N(0, 1)`), all biases `0.1·N(0, 1)`, so a swapped norm or a dropped bias changes
the logits. V (the model's vocab_size) is a little larger than the tokenizer's vocabulary, as in
Qwen and Gemma; greedy decoding may pick an id past the tokenizer's. Tied models tend to repeat
one token greedily (random weights); `greedy_logits` checks the decode numerically all the same.

Semantics worth knowing when reading them (as the installed transformers implements them):
gemma3's sliding window lets query q see keys kv with `q - sliding_window < kv <= q` (8 keys,
itself included); its embeddings are multiplied by `sqrt(hidden_size)` cast to the weights'
dtype, and attention scores by `query_pre_attn_scalar ** -0.5`; smollm3's `no_rope_layers[i]`
is 1 where layer i uses rotary embeddings and 0 where it does not.

## Chat templates

Small templates written by the script in the style of each family (not copies): ChatML in the
Qwen2.5 style (qwen2, qwen3: tool calls through `tojson`, consecutive tool results through
`loop.previtem` / `loop.nextitem`), SmolLM3's (smollm3: metadata system block, `/no_think` with
an empty think block, `<think>` stripped from turns before the last user message found by a
reversed loop with `break`, `{{% generation %}}` tags, a `namespace`), Llama 3's (llama3,
llama3_untied: `bos_token` rendered by the template, header markers, plain `{{% %}}` tags on
indented lines that only `trim_blocks` + `lstrip_blocks` keep out of the text) and Gemma 3's
(gemma3_text: `bos_token`, system folded into the first user turn, "model" turns that must
alternate). Each skips its system message with `continue` and has a `raise_exception` branch.
The marker strings that are not added tokens of the fixture's tokenizer (`<|start_header_id|>`,
`<start_of_turn>`, ...) are tokenized as text; `<|im_start|>` / `<|im_end|>` are added tokens.

transformers 5 loads `qwen2/`'s tokenizer as `Qwen2Tokenizer` (picked by model_type over
`tokenizer_class`), whose own pre-tokenizer regex and `unk_token` default replace the file's:
the script checks that every recorded id list is still the one `tokenizers` gives from
`tokenizer.json` itself, and that fixture's `special_tokens` shows an `unk_token` that no file
names.

## Fixtures

| directory | model_type | layers | tied | chat template | exercises |
| --- | --- | --- | --- | --- | --- |
{rows}
"""


def write_readme(specs: dict[str, dict]) -> None:
    import platform

    import safetensors
    import tokenizers

    rows = []
    for name, spec in specs.items():
        if not (OUT / name).is_dir():
            continue
        c = spec["config"]
        rows.append(
            f"| `{name}/` | {spec['model_type']} | {c['num_hidden_layers']} | "
            f"{'yes' if c['tie_word_embeddings'] else 'no'} | {spec['chat']['style']} in "
            f"{CHAT_STORES[spec['chat']['store']]} | {spec['covers']} |"
        )
    if (OUT / MULTIMODAL / "layout.json").is_file():
        rows.append(
            f"| `{MULTIMODAL}/` | gemma3 | 3 | yes | (gemma3_text's) | Gemma3ForConditionalGeneration "
            "whose language model is `gemma3_text/`'s (checked: the same logits, exactly), with "
            "a tiny SigLIP vision tower: only `config.json` (text_config + vision_config) and "
            "`layout.json` (every tensor's name, shape, dtype, and the gemma3_text tensor a "
            "text-tower name holds) are committed; the tests rebuild model.safetensors from "
            "`gemma3_text/` (vision tensors zero) to import the text tower. |"
        )
    five = int(transformers.__version__.split(".")[0]) >= 5
    (OUT / "README.md").write_text(
        README.format(
            transformers=transformers.__version__,
            torch=torch.__version__,
            tokenizers=tokenizers.__version__,
            safetensors=safetensors.__version__,
            numpy=np.__version__,
            python=platform.python_version(),
            gen="5.x" if five else "4.x",
            spelling="`rope_parameters`" if five else "`rope_theta` + `rope_scaling`",
            T=T,
            P=P,
            N=N,
            chat_new=CHAT_NEW_TOKENS,
            rows="\n".join(rows),
        )
    )


def main(argv: list[str]) -> None:
    torch.use_deterministic_algorithms(True)
    specs = fixture_specs()
    names = argv or list(specs)
    print(f"transformers {transformers.__version__}, torch {torch.__version__} → {OUT}")
    for i, name in enumerate(specs):
        if name in names:
            build(name, specs[name], OUT / name, seed=1000 + i)
    if "gemma3_text" in names or MULTIMODAL in names:
        build_multimodal(OUT / "gemma3_text", OUT / MULTIMODAL)
    write_readme(specs)
    for f in OUT.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"total {total / 1e6:.2f} MB under {OUT}")
    assert total < 2_000_000, "fixtures over 2 MB: shrink vocab or widths"


if __name__ == "__main__":
    main(sys.argv[1:])
