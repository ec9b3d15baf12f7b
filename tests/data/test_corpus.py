"""Corpora (built-in and user files), their errors, and the deterministic by-document split."""

import json

import pytest

from compactlm.data import DataError, Document, load_corpus, split_corpus


def test_pydocs_documents_are_sorted_topics() -> None:
    from pydoc_data.topics import topics

    docs = load_corpus("pydocs")
    assert [d.id for d in docs] == sorted(topics)
    assert all(d.text == topics[d.id] for d in docs)


def test_pystdlib_is_library_code_without_tests() -> None:
    docs = load_corpus("pystdlib")
    ids = [d.id for d in docs]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert "os.py" in ids and "json/__init__.py" in ids
    for doc_id in ids:
        parts = doc_id.split("/")
        assert doc_id.endswith(".py")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), doc_id
        assert not parts[-1].startswith("test_"), doc_id
    assert "pydoc_data/topics.py" not in ids  # that is the pydocs corpus
    assert sum(len(d.text.encode()) for d in docs) > 5_000_000


def test_max_corpus_bytes_caps_at_char_boundary() -> None:
    docs = load_corpus("pydocs", max_corpus_bytes=10_001)
    assert sum(len(d.text.encode()) for d in docs) <= 10_001
    full = load_corpus("pydocs")
    assert [d.id for d in docs] == [d.id for d in full[: len(docs)]]
    assert full[len(docs) - 1].text.startswith(docs[-1].text)


def _docs(n: int, size: int = 100) -> list[Document]:
    return [Document(f"doc{i:03d}", f"{i} " + "x" * size) for i in range(n)]


def test_split_is_deterministic_disjoint_and_by_document() -> None:
    docs = load_corpus("pydocs")
    a = split_corpus(docs, val_fraction=0.05, seed=0)
    b = split_corpus(list(reversed(docs)), val_fraction=0.05, seed=0)
    assert a.info["mode"] == "documents"
    assert {d.id for d in a.val} == {d.id for d in b.val}
    assert (
        a.info["val_ids_sha256"]
        == split_corpus(docs, val_fraction=0.05, seed=0).info["val_ids_sha256"]
    )
    train_ids, val_ids = {d.id for d in a.train}, {d.id for d in a.val}
    assert not train_ids & val_ids and train_ids | val_ids == {d.id for d in docs}
    total = sum(len(d.text.encode()) for d in docs)
    assert a.info["train_bytes"] + a.info["val_bytes"] == total
    assert 0.02 * total < a.info["val_bytes"] <= 0.05 * total
    c = split_corpus(docs, val_fraction=0.05, seed=1)
    assert {d.id for d in c.val} != val_ids
    json.dumps(a.info)  # goes into the run's metadata


def test_split_assignment_is_stable_when_documents_are_added() -> None:
    base = split_corpus(_docs(200), val_fraction=0.1, seed=3)
    grown = split_corpus(_docs(200) + [Document("zzz-new", "y" * 100)], val_fraction=0.1, seed=3)
    # Documents are taken in hash order; adding one can only extend or shift the tail of it.
    overlap = {d.id for d in base.val} & {d.id for d in grown.val}
    assert len(overlap) >= len(base.val) - 2


def test_single_document_falls_back_to_tail_split() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    s = split_corpus([Document("only", text)], val_fraction=0.1, seed=0)
    assert s.info["mode"] == "tail"
    assert s.train[0].text + s.val[0].text == text
    assert s.val[0].text.startswith("line ") and s.train[0].text.endswith("\n")
    assert 0.08 < len(s.val[0].text) / len(text) < 0.12


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(DataError, match="val_fraction"):
        split_corpus(_docs(10), val_fraction=0.0, seed=0)


# --- user data -----------------------------------------------------------------------------------


def test_text_file(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("héllo\r\nworld", encoding="utf-8", newline="")
    assert load_corpus(str(tmp_path / "a.txt")) == [Document("a.txt", "héllo\r\nworld")]


def test_directory_with_glob(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "sub" / "a.txt").write_text("A")
    (tmp_path / "c.md").write_text("C")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe")
    docs = load_corpus(str(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("b.txt", "B"), ("sub/a.txt", "A")]
    assert [d.id for d in load_corpus(str(tmp_path), glob="*.md")] == ["c.md"]
    with pytest.raises(DataError, match="no files matching"):
        load_corpus(str(tmp_path), glob="*.rst")
    with pytest.raises(DataError, match="not UTF-8"):
        load_corpus(str(tmp_path), glob="**/*")


def test_glob_pattern(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.txt").write_text("one")
    (tmp_path / "x" / "2.txt").write_text("two")
    (tmp_path / "x" / "3.md").write_text("three")
    docs = load_corpus(str(tmp_path / "x" / "*.txt"))
    assert [(d.id, d.text) for d in docs] == [("1.txt", "one"), ("2.txt", "two")]
    with pytest.raises(DataError, match="matches no files"):
        load_corpus(str(tmp_path / "x" / "*.csv"))


def test_jsonl(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [{"text": "first"}, {"text": "sec\nond", "meta": 1}, {"body": "b"}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n")
    docs = load_corpus(str(path))
    assert [(d.id, d.text) for d in docs] == [("d.jsonl:1", "first"), ("d.jsonl:2", "sec\nond")]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(DataError, match=r"d.jsonl:3: no 'text' field \(found \['body'\]\)"):
        load_corpus(str(path))
    path.write_text('{"body": "b"}\n')
    assert [d.text for d in load_corpus(str(path), jsonl_field="body")] == ["b"]
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match="d.jsonl:2: invalid JSON"):
        load_corpus(str(path))
    path.write_text('{"text": 3}\n')
    with pytest.raises(DataError, match="expected a string"):
        load_corpus(str(path))


def test_unknown_corpus_names_valid_choices(tmp_path) -> None:
    with pytest.raises(DataError, match=r"unknown corpus 'pystdlb'.*pystdlib, pydocs"):
        load_corpus("pystdlb")
    with pytest.raises(DataError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))


def test_empty_corpus(tmp_path) -> None:
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="no text"):
        load_corpus(str(tmp_path / "e.txt"))
