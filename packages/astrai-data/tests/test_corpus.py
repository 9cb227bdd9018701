"""Reading corpus folders: kinds, order, and the error for each kind of invalid record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from astrai_data import Corpus, CorpusError, find_corpus_files


def test_folder_documents_in_sorted_order(
    tmp_path: Path, documents: list[str], write_text_corpus: Callable
) -> None:
    write_text_corpus(tmp_path / "corpus" / "b", documents[3:])
    write_text_corpus(tmp_path / "corpus" / "a", documents[:3])
    (tmp_path / "corpus" / "README.md").write_text("not a document")

    corpus = Corpus(tmp_path / "corpus")

    assert corpus.kind == "text"
    assert [record.text for record in corpus] == documents
    assert corpus.total_bytes == sum(len(document.encode()) for document in documents)


def test_jsonl_text_records_and_blank_lines(
    tmp_path: Path, documents: list[str], write_jsonl: Callable
) -> None:
    path = write_jsonl(
        tmp_path / "texts.jsonl", [{"text": documents[0], "source": "x"}, b"   ", {"text": documents[1]}]
    )

    records = list(Corpus(path))

    assert [record.text for record in records] == documents[:2]
    assert [record.source for record in records] == [f"{path}:1", f"{path}:3"]


def test_chat_records_keep_role_and_content_only(
    tmp_path: Path, conversations: list[dict], write_jsonl: Callable
) -> None:
    records = [dict(conversations[0], id=7)] + conversations[1:]
    path = write_jsonl(tmp_path / "chat.jsonl", records)

    corpus = Corpus(path)

    assert corpus.kind == "chat"
    assert [record.messages for record in corpus] == [c["messages"] for c in conversations]


def test_auto_kind_rejects_mixed_folder(
    tmp_path: Path,
    documents: list[str],
    conversations: list[dict],
    write_text_corpus: Callable,
    write_jsonl: Callable,
) -> None:
    write_text_corpus(tmp_path / "pretrain", documents[:2])
    write_jsonl(tmp_path / "sft.jsonl", conversations)

    with pytest.raises(CorpusError, match="mixes record kinds.*pass --kind chat or --kind text"):
        Corpus(tmp_path)


def test_explicit_kind_leaves_other_files_out(
    tmp_path: Path,
    documents: list[str],
    conversations: list[dict],
    write_text_corpus: Callable,
    write_jsonl: Callable,
) -> None:
    write_text_corpus(tmp_path / "pretrain", documents[:2])
    write_jsonl(tmp_path / "sft.jsonl", conversations)

    chat = Corpus(tmp_path, kind="chat")
    text = Corpus(tmp_path, kind="text")
    both = Corpus(tmp_path, kind="any")

    assert chat.files == [tmp_path / "sft.jsonl"]
    assert len(chat.left_out) == 2
    assert [record.kind for record in chat] == ["chat"] * len(conversations)
    assert [record.text for record in text] == documents[:2]
    assert text.left_out == [tmp_path / "sft.jsonl"]
    assert sorted(record.kind for record in both) == ["chat"] * len(conversations) + ["text"] * 2


def test_missing_and_empty_corpus(tmp_path: Path, documents: list[str]) -> None:
    (tmp_path / "notes.md").write_text("no documents here")

    with pytest.raises(FileNotFoundError, match="not found"):
        find_corpus_files(tmp_path / "absent")
    with pytest.raises(CorpusError, match="no .txt or .jsonl files"):
        Corpus(tmp_path)
    with pytest.raises(CorpusError, match="not a .txt or .jsonl file"):
        Corpus(tmp_path / "notes.md")
    with pytest.raises(CorpusError, match="kind='dpo' is not supported"):
        Corpus(tmp_path, kind="dpo")


def test_unknown_record_shape_needs_kind(tmp_path: Path, write_jsonl: Callable) -> None:
    write_jsonl(tmp_path / "notes.jsonl", [{"title": "q", "body": "a"}])

    with pytest.raises(CorpusError, match="has a 'text', 'messages', 'prompt' or 'chosen'/'rejected' field.*--kind"):
        Corpus(tmp_path)


INVALID_JSONL = [
    (b"{not json", "invalid JSON"),
    (b'["a list"]', "expected a JSON object, got list"),
    (b'{"title": "no text"}', "missing 'text' field"),
    (b'{"text": 42}', "'text' must be a string, got int"),
    (b'{"text": " \\n\\t "}', "empty document"),
    (b'{"text": "caf\xe9"}', "invalid UTF-8 at column 14"),
]

INVALID_CHAT = [
    (b'{"messages": []}', "'messages' must be a non-empty list"),
    (b'{"messages": "hello"}', "'messages' must be a non-empty list"),
    (b'{"messages": ["hello"]}', r"messages\[0\] must be an object, got str"),
    (b'{"messages": [{"role": "bot", "content": "hi"}]}', r"messages\[0\].role must be one of"),
    (b'{"messages": [{"role": "assistant", "content": null}]}', r"messages\[0\].content must be a string"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    (b'{"text": "a text record among chats"}', "missing 'messages' field"),
]


PAIR = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}
INVALID_PREFERENCE = [
    (b'{"prompt": "Hi", "chosen": "Hello."}', "missing 'rejected' field"),
    (b'{"prompt": 7, "chosen": "a", "rejected": "b"}', "'prompt' must be a non-empty list"),
    (b'{"prompt": "  ", "chosen": "a", "rejected": "b"}', "'prompt' is an empty string"),
    (b'{"prompt": "Hi", "chosen": "", "rejected": "b"}', "'chosen' is an empty string"),
    (b'{"prompt": "Hi", "chosen": "a", "rejected": [{"role": "user", "content": "b"}]}', "'rejected' has no assistant"),
    (b'{"prompt": "Hi", "chosen": [{"role": "bot", "content": "a"}], "rejected": "b"}', r"chosen\[0\].role must be one of"),
]

PROMPT = {"prompt": "What is two and two?", "answer": "4"}
INVALID_PROMPT = [
    (b'{"prompt": "Hi", "answer": 4}', "'answer' must be a string or null, got int; write it as \"4\""),
    (b'{"prompt": "Hi", "messages": []}', "has both 'prompt' and 'messages'"),
    (b'{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}', "ends with an assistant"),
    (b'{"answer": "4"}', "missing 'messages' field"),
]

FIRST_RECORD = [({"text": "valid"}, INVALID_JSONL), (PAIR, INVALID_PREFERENCE), (PROMPT, INVALID_PROMPT)]


def valid_first_record(line: bytes, problem: str, conversation: dict) -> dict:
    """Return a valid record of the kind the invalid ``line`` is tested as."""
    for record, cases in FIRST_RECORD:
        if (line, problem) in cases:
            return record
    return conversation


@pytest.mark.parametrize(("line", "problem"), INVALID_JSONL + INVALID_CHAT + INVALID_PREFERENCE + INVALID_PROMPT)
def test_invalid_jsonl_record_names_file_and_line(
    tmp_path: Path, line: bytes, problem: str, conversations: list[dict], write_jsonl: Callable
) -> None:
    first = valid_first_record(line, problem, conversations[0])
    path = write_jsonl(tmp_path / "data.jsonl", [first, b"", line, first])

    with pytest.raises(CorpusError, match=problem) as raised:
        list(Corpus(path))

    assert str(raised.value).startswith(f"{path}:3: ")
    assert "--skip-invalid" in str(raised.value)


def test_invalid_txt_documents_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"line one\nline two\nbad \xff byte\n")
    (tmp_path / "b.txt").write_bytes(b" \n\n")

    with pytest.raises(CorpusError, match=r"a\.txt:3: invalid UTF-8 at byte 22 \(the file must be UTF-8\)"):
        list(Corpus(tmp_path))
    with pytest.raises(CorpusError, match=r"b\.txt:1: empty document"):
        list(Corpus(tmp_path / "b.txt"))


def test_skip_invalid_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, conversations: list[dict], write_jsonl: Callable
) -> None:
    bad_lines = [line for line, _ in INVALID_CHAT]
    path = write_jsonl(tmp_path / "chat.jsonl", [conversations[0], *bad_lines * 2, conversations[1]])
    corpus = Corpus(path, skip_invalid=True)

    with caplog.at_level(logging.WARNING, logger="astrai_data.corpus"):
        records = list(corpus)

    assert [record.messages for record in records] == [
        conversations[0]["messages"],
        conversations[1]["messages"],
    ]
    assert corpus.skipped == 2 * len(INVALID_CHAT)
    assert len(caplog.records) == 11  # ten skipped records, then one line saying the rest are counted only
    assert f"{path}:2:" in caplog.records[0].getMessage()


def test_skip_count_resets_on_each_pass(
    tmp_path: Path, conversations: list[dict], write_jsonl: Callable, conversation: Callable
) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [conversations[0], b"{oops", conversation(("user", "only"))])
    corpus = Corpus(path, skip_invalid=True)

    list(corpus)
    list(corpus)

    assert corpus.skipped == 2


def test_record_kinds_detected_and_normalised_to_messages(
    tmp_path: Path, conversations: list[dict], write_jsonl: Callable
) -> None:
    prompt_turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    write_jsonl(tmp_path / "dpo.jsonl", [PAIR, {"prompt": prompt_turns, "chosen": "A", "rejected": "B"}])
    write_jsonl(tmp_path / "grpo.jsonl", [PROMPT, {"messages": prompt_turns}])

    pairs = Corpus(tmp_path / "dpo.jsonl")
    prompts = Corpus(tmp_path / "grpo.jsonl")
    first_pair, second_pair = list(pairs)
    first_prompt, second_prompt = list(prompts)

    assert (pairs.kind, pairs.detected, prompts.kind) == ("preference", True, "prompt")
    assert first_pair.prompt == [{"role": "user", "content": "Hi"}]
    assert first_pair.chosen == [{"role": "assistant", "content": "Hello."}]
    assert first_pair.rejected == [{"role": "assistant", "content": "Go away."}]
    assert second_pair.prompt == prompt_turns
    assert (first_prompt.prompt, first_prompt.answer) == ([{"role": "user", "content": PROMPT["prompt"]}], "4")
    assert (second_prompt.prompt, second_prompt.answer) == (prompt_turns, None)
    with pytest.raises(CorpusError, match="mixes record kinds"):
        Corpus(tmp_path)


def test_chat_file_read_as_prompts_with_kind(tmp_path: Path, write_jsonl: Callable) -> None:
    question = {"messages": [{"role": "user", "content": "Why?"}]}
    chat = {"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]}
    write_jsonl(tmp_path / "chat.jsonl", [chat])
    write_jsonl(tmp_path / "questions.jsonl", [question])

    as_prompts = Corpus(tmp_path / "questions.jsonl", kind="prompt")
    chats = Corpus(tmp_path, kind="chat")

    assert [record.kind for record in as_prompts] == ["prompt"]
    assert Corpus(tmp_path / "questions.jsonl").kind == "prompt"  # no assistant reply: detected as a prompt
    assert chats.files == [tmp_path / "chat.jsonl", tmp_path / "questions.jsonl"]
    with pytest.raises(CorpusError, match="questions.jsonl:1: conversation has no assistant message"):
        list(chats)


def test_text_kept_unless_normalisation_requested(tmp_path: Path, write_jsonl: Callable) -> None:
    text = "全角标点：“你好”，ＡＢＣ　１２３！\r\n  two spaces\n\n"
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8", newline="")
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "（问）"}, {"role": "assistant", "content": "ＯＫ"}]}])

    kept = next(iter(Corpus(tmp_path / "doc.txt")))
    normalised = next(iter(Corpus(tmp_path / "doc.txt", normalize="nfkc")))
    chat = next(iter(Corpus(tmp_path / "chat.jsonl", normalize="nfkc")))

    assert kept.text == text
    assert normalised.text == "全角标点:“你好”,ABC 123!\r\n  two spaces\n\n"
    assert chat.messages == [{"role": "user", "content": "(问)"}, {"role": "assistant", "content": "OK"}]
    with pytest.raises(CorpusError, match="normalize='nfkd' is not supported"):
        Corpus(tmp_path, normalize="nfkd")
