"""Imported tokenizers against transformers' own (issue 18): for every fixture of
scripts/make_hf_fixtures.py, its tokenizer_reference.json (made by transformers' AutoTokenizer
reloading the directory) holds the ids with and without the specials, bos / eos / pad, the stop
ids of generation_config.json, two chats rendered by apply_chat_template (text, ids, and the
model's greedy reply) and a chat the template refuses. Ours must give the same, read through
`tokenizer_from_hf` (what `compactlm import` calls) and through `compactlm generate` on an
imported run. No torch, no transformers."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from compactlm.config import get_preset
from compactlm.data.config import padded_vocab_size
from compactlm.data.tokenizer import heal_prompt, load_tokenizer, prompt_tokens, stop_ids
from compactlm.interop.hf_config import InteropError
from compactlm.interop.hf_tokenizer import render_chat, tokenizer_from_hf
from tests.commandline import cli

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"
ALL = ("qwen2", "qwen3", "llama3", "llama3_untied", "smollm3", "gemma3_text")
IMPORTABLE = ALL  # every fixture's model imports (docs/models.md)


def _reference(name: str) -> dict:
    return json.loads((FIXTURES / name / "tokenizer_reference.json").read_text(encoding="utf-8"))


def _tokenizer(hf_dir: Path):
    """`tokenizer_from_hf` as `compactlm import` calls it: the model's vocabulary padded to 64."""
    hf = json.loads((hf_dir / "config.json").read_text())
    cfg = get_preset("nano")
    model = dataclasses.replace(cfg.model, vocab_size=padded_vocab_size(hf["vocab_size"]))
    data = dataclasses.replace(cfg.data, tokenizer="hf")
    return tokenizer_from_hf(hf_dir, hf, dataclasses.replace(cfg, model=model, data=data))


def _chat(tok, messages: list[dict]) -> str:
    return render_chat(tok.chat_template, messages, special_tokens=tok.special_tokens)


# ---------------------------------------------------------------------------------------------
# The tokenizer, against transformers' recorded outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_ids_match_transformers_with_and_without_specials(name):
    """Prompts get `tokenizer(text).input_ids` (the BOS of Llama 3 and Gemma, none for Qwen and
    SmolLM, decided by the tokenizer.json's post-processor); the training stream gets
    `add_special_tokens=False` ids. A leading space, non-ASCII, newlines, the eos token written
    out."""
    tok = _tokenizer(FIXTURES / name)
    for case in _reference(name)["texts"]:
        ids, added = prompt_tokens(tok, case["text"])
        assert ids.tolist() == case["input_ids"], case["text"]
        assert tok.encode(case["text"]).tolist() == case["input_ids_no_specials"], case["text"]
        n_added = len(case["input_ids"]) - len(case["input_ids_no_specials"])
        assert added.tolist() == [True] * n_added + [False] * len(case["input_ids_no_specials"])
    bos_first = name in ("llama3", "llama3_untied", "gemma3_text")
    assert (prompt_tokens(tok, "x")[0][0] == tok.bos_id) == bos_first


@pytest.mark.parametrize("name", ALL)
def test_special_ids_and_stop_ids_match_transformers(name):
    """bos / eos / pad are the ids transformers' tokenizer reports (tokenizer_config.json); where
    it reports none (Qwen's bos) ours is generation_config.json's. Generation stops at
    generation_config's eos ids, eos first. The token strings a template sees are transformers'
    (qwen2's unk_token is left out: transformers 5 loads that fixture as Qwen2Tokenizer, whose
    class default it is; no file of the checkpoint names one)."""
    ref, tok = _reference(name), _tokenizer(FIXTURES / name)
    generation = json.loads((FIXTURES / name / "generation_config.json").read_text())
    for n in ("bos", "eos", "pad"):
        theirs = ref[f"{n}_token_id"]
        assert getattr(tok, f"{n}_id") == (
            generation[f"{n}_token_id"] if theirs is None else theirs
        )
    assert tok.stop_ids[0] == tok.eos_id
    assert set(tok.stop_ids) == {ref["eos_token_id"], *ref["generation_eos_token_ids"]}
    assert stop_ids(tok) == tok.stop_ids
    assert tok.special_tokens == {
        k: v for k, v in ref["special_tokens"].items() if not (name == "qwen2" and k == "unk_token")
    }


@pytest.mark.parametrize("name", ALL)
def test_chat_template_renders_transformers_text_and_ids(name):
    """Both conversations (one multi-turn with a system message) render to the text of
    transformers' apply_chat_template(add_generation_prompt=True), and encode (no specials added
    again) to its tokenize=True ids. The templates cover trim_blocks / lstrip_blocks, loop
    controls, namespaces, `{% generation %}`, transformers' `tojson`, and three places a template
    is kept (tokenizer_config.json string, named list, chat_template.jinja)."""
    ref, tok = _reference(name), _tokenizer(FIXTURES / name)
    assert tok.chat_template
    for chat in ref["chats"]:
        text = _chat(tok, chat["messages"])
        assert text == chat["text"]
        assert tok.encode(text).tolist() == chat["input_ids"]


@pytest.mark.parametrize("name", ALL)
def test_template_refusal_is_one_line_with_transformers_message(name):
    ref, tok = _reference(name), _tokenizer(FIXTURES / name)
    with pytest.raises(InteropError) as e:
        _chat(tok, ref["refused_chat"]["messages"])
    assert str(e.value) == f"chat template: {ref['refused_chat']['error']}"


def test_environment_is_transformers():
    """What the fixtures' templates do not print: strftime_now is today's date, tojson is
    json.dumps without escaping non-ASCII or HTML characters (jinja2's own filter escapes both),
    tools is None, a syntax error and an undefined call are one-line InteropErrors, and the
    sandbox hides private attributes and refuses mutating calls."""
    import datetime

    def render(template: str, **kw) -> str:
        return render_chat(template, [{"role": "user", "content": "é<&>"}], special_tokens=kw)

    before = datetime.date.today().isoformat()
    assert render("{{ strftime_now('%Y-%m-%d') }}") in (before, datetime.date.today().isoformat())
    assert render("{{ messages[0] | tojson }}") == '{"role": "user", "content": "é<&>"}'
    chat = [{"role": "user", "content": "é<&>"}]  # its keyword arguments are json.dumps'
    assert render("{{ messages | tojson(indent=1) }}") == json.dumps(
        chat, indent=1, ensure_ascii=False
    )
    assert render("{{ messages | tojson(ensure_ascii=True) }}") == json.dumps(chat)
    assert render("{{ bos_token }}{{ tools }}{{ add_generation_prompt }}", bos_token="<s>") == (
        "<s>NoneTrue"
    )
    for template, message in [
        ("{% for m in messages %}", "chat template: Unexpected end of template"),
        ("{{ no_such_function() }}", "chat template: 'no_such_function' is undefined"),
        ("{{ messages.__class__ }}", ""),  # sandboxed: undefined, renders nothing
        ("{{ messages.append(1) }}", "chat template: access to attribute 'append' of 'list'"),
    ]:
        if message:
            with pytest.raises(InteropError) as e:
                render(template)
            assert str(e.value).startswith(message) and "\n" not in str(e.value)
        else:
            assert render(template) == message


# ---------------------------------------------------------------------------------------------
# Where the ids come from (transformers' precedence), on edited copies of a fixture
# ---------------------------------------------------------------------------------------------


def _copy(name: str, tmp_path: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(FIXTURES / name, out)
    return out


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def test_generation_config_lists_the_stop_ids(tmp_path):
    """Llama 3 instruct: tokenizer_config.json's eos_token is the tokenizer's eos; transformers'
    generate stops at every id of generation_config.json's eos_token_id list."""
    src = _copy("llama3", tmp_path)
    _edit(src / "generation_config.json", eos_token_id=[450, 449])
    tok = _tokenizer(src)
    assert tok.eos_id == 449 and tok.stop_ids == (449, 450)
    # Without tokenizer_config's eos_token: generation_config's first id; without both files
    # (a bare checkpoint): config.json's.
    _edit(src / "tokenizer_config.json", eos_token=None, pad_token=None, bos_token=None)
    tok = _tokenizer(src)
    assert (tok.eos_id, tok.stop_ids, tok.bos_id, tok.pad_id) == (450, (450, 449), 448, 450)
    (src / "generation_config.json").unlink()
    (src / "tokenizer_config.json").unlink()
    tok = _tokenizer(src)
    assert (tok.eos_id, tok.stop_ids, tok.bos_id, tok.pad_id) == (449, (449,), 448, 450)
    assert tok.chat_template is None and tok.special_tokens == {}


def test_added_token_dicts_and_template_files(tmp_path):
    """bos_token as an AddedToken dict; chat_template.jinja wins over tokenizer_config.json's
    template (as transformers reads them); a named list without "default" and a special token
    that is not in the vocabulary are refused in one line."""
    src = _copy("qwen2", tmp_path)
    _edit(src / "tokenizer_config.json", eos_token={"content": "<|im_end|>", "special": True})
    (src / "chat_template.jinja").write_text("{{ eos_token }}|{{ messages[0].content }}\n")
    tok = _tokenizer(src)
    assert tok.eos_id == 450 and tok.stop_ids == (450, 448)
    assert _chat(tok, [{"role": "user", "content": "hi"}]) == "<|im_end|>|hi"
    (src / "chat_template.jinja").unlink()
    _edit(src / "tokenizer_config.json", chat_template=[{"name": "tool_use", "template": "x"}])
    with pytest.raises(InteropError, match=r"names templates \['tool_use'\] but none 'default'"):
        _tokenizer(src)
    _edit(src / "tokenizer_config.json", chat_template=None, pad_token="<|nope|>")
    with pytest.raises(InteropError, match=r"pad_token='<\|nope\|>' is not a token of tokeniz"):
        _tokenizer(src)


def test_generate_stops_at_any_stop_id():
    """generate(eos_id=(a, b)) ends a row at whichever it samples first and pads with a; one int
    works as before."""
    from compactlm.models.generate import generate
    from compactlm.models.transformer import ModelConfig, Transformer

    # init_std 0.3: the untrained model's greedy continuation is not one repeated token
    cfg = ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3
    )
    model = Transformer(dataclasses.replace(cfg, scan_layers=False), rngs=nnx.Rngs(0))
    prompt = jax.numpy.array([[1, 2, 3]])
    greedy = np.asarray(generate(model, prompt, max_new_tokens=6, temperature=0.0))[0, 3:].tolist()
    j = next(i for i in range(1, 6) if greedy[i] not in greedy[:i])  # first new id seen late
    stop, never = greedy[j], next(i for i in range(64) if i not in greedy)
    for eos, pad in [((never, stop), never), (stop, stop)]:
        out = generate(model, prompt, max_new_tokens=6, temperature=0.0, eos_id=eos)
        assert np.asarray(out)[0, 3:].tolist() == [*greedy[: j + 1], *[pad] * (5 - j)]


# ---------------------------------------------------------------------------------------------
# compactlm import + generate, end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> an imported run directory of that fixture (imported once, on first use)."""
    root = tmp_path_factory.mktemp("hf_tokenizer_runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("COMPACTLM_CACHE", str(root / "cache"))
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            run = root / name
            assert cli("import", str(FIXTURES / name), f"workdir={run}", "data.corpus=pydocs") == 0
            runs[name] = run
        return runs[name]

    yield get
    mp.undo()


def _reply(tok, reply: list[int]) -> str:
    """transformers' greedy reply as `generate` prints it: cut at the first stop id, decoded."""
    ended = [i for i, t in enumerate(reply) if t in tok.stop_ids]
    return tok.decode(reply[: ended[0]] if ended else reply)


@pytest.mark.parametrize("name", IMPORTABLE)
def test_imported_run_keeps_the_tokenizer_and_replies_as_transformers(name, imported):
    """The run's saved tokenizer is the one read from the checkpoint (stop ids, template), and
    its model's greedy reply to each chat's ids is transformers' (`greedy_reply`)."""
    from compactlm.models.generate import generate
    from compactlm.train.loop import load_run

    run = imported(name)
    tok, ref = load_tokenizer(run), _reference(name)
    fresh = _tokenizer(FIXTURES / name)
    assert (tok.stop_ids, tok.chat_template, tok.special_tokens) == (
        fresh.stop_ids,
        fresh.chat_template,
        fresh.special_tokens,
    )
    trainer = load_run(run)
    model = trainer.program.model(trainer.state)
    for chat in ref["chats"]:
        ids = tok.encode(_chat(tok, chat["messages"]))
        n = len(chat["greedy_reply"])
        out = generate(model, ids, max_new_tokens=n, temperature=0.0, eos_id=tok.stop_ids)
        assert np.asarray(out)[0, len(ids) :].tolist() == chat["greedy_reply"], chat["messages"]


@pytest.mark.parametrize("name", ["llama3", "qwen2", "smollm3", "gemma3_text"])
def test_generate_chat_and_prompt_file_end_to_end(name, imported, tmp_path, capsys):
    """`compactlm generate RUN chat=true temperature=0 max_new_tokens=4` prints transformers'
    rendering of the one-message chat, then transformers' greedy reply; prompt_file= with the
    same text (a newline and non-ASCII in it) prints the same."""
    run, ref = imported(name), _reference(name)
    single = ref["chats"][1]
    assert len(single["messages"]) == 1 and len(single["greedy_reply"]) == 4
    content = single["messages"][0]["content"]
    expected = single["text"] + _reply(load_tokenizer(run), single["greedy_reply"]) + "\n"
    args = ["chat=true", "temperature=0", "max_new_tokens=4"]
    capsys.readouterr()
    assert cli("generate", str(run), *args, f"prompt={content}") == 0
    assert capsys.readouterr().out == expected
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(content.encode("utf-8"))
    assert cli("generate", str(run), *args, f"prompt_file={prompt}") == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_generate_plain_prompt_gets_transformers_ids(name, imported, tmp_path, capsys):
    """Without chat: the prompt's ids are transformers' `tokenizer(text)` (Llama 3: BOS first),
    so greedy decoding continues as transformers' did: reference.npz's greedy_prompt (read back
    as text) followed by its greedy_tokens."""
    run = imported(name)
    tok, npz = load_tokenizer(run), np.load(FIXTURES / name / "reference.npz")
    prompt_ids = npz["greedy_prompt"][0].tolist()
    text = tok.decode(prompt_ids)
    assert prompt_tokens(tok, text)[0].tolist() == prompt_ids  # the text gives those ids back
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    n = npz["greedy_tokens"].shape[1]
    capsys.readouterr()
    args = [f"prompt_file={tmp_path / 'p.txt'}", "heal=false", "temperature=0"]
    assert cli("generate", str(run), *args, f"max_new_tokens={n}") == 0
    want = [*prompt_ids, *npz["greedy_tokens"][0].tolist()]
    ended = [i for i, t in enumerate(want) if i >= len(prompt_ids) and t in tok.stop_ids]
    assert capsys.readouterr().out == tok.decode(want[: ended[0]] if ended else want) + "\n"


def test_token_healing_keeps_the_bos():
    """heal_prompt on a Llama 3 prompt: transformers' ids with the BOS kept in front, the last
    text token backed off and allowed again (a one-token text heals too: the BOS is left); a
    prompt that ends in a special token is left as it is."""
    tok = _tokenizer(FIXTURES / "llama3")
    want = _reference("llama3")["texts"][0]["input_ids"]  # "Hello world"
    ids, allowed = heal_prompt(tok, "Hello world")
    assert ids.tolist() == want[:-1] and allowed is not None and allowed[want[-1]]
    assert not allowed[tok.bos_id] and not allowed[tok.eos_id]
    one = tok.decode(want[:2])
    ids, allowed = heal_prompt(tok, one)
    assert ids.tolist() == [tok.bos_id] and allowed[want[1]]
    special = _reference("llama3")["texts"][4]  # "a literal <|end_of_text|> inside the text"
    text = special["text"].split("<|end_of_text|>")[0] + "<|end_of_text|>"
    ids, allowed = heal_prompt(tok, text)
    assert allowed is None and ids.tolist() == special["input_ids"][: len(ids)]


@pytest.mark.parametrize("name", ["llama3", "qwen3"])  # template in tokenizer_config / .jinja
def test_export_gives_back_the_specials_template_and_stop_ids(name, tmp_path):
    """import -> export of a checkpoint keeps what transformers reads of its tokenizer: the
    named special tokens and the chat template (tokenizer_config.json), and generation_config's
    eos list; the export read back is the same tokenizer."""
    src = _copy(name, tmp_path)
    stops = [449, 450] if name == "llama3" else None
    if stops:
        _edit(src / "generation_config.json", eos_token_id=stops)
    before = _tokenizer(src)
    run, out = tmp_path / "run", tmp_path / "hf"
    assert cli("import", str(src), f"workdir={run}") == 0
    assert cli("export", str(run), f"workdir={out}") == 0
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == before.chat_template is not None
    for key, value in before.special_tokens.items():
        assert tok_cfg[key] == value, key
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == (stops or before.eos_id)
    after = _tokenizer(out)
    assert (after.stop_ids, after.special_tokens, after.chat_template) == (
        before.stop_ids,
        before.special_tokens,
        before.chat_template,
    )
