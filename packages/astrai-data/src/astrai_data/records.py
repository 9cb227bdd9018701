"""The four record kinds of a corpus and the checks that turn a JSON line into a :class:`Record`.

Design choices:
- Every record kind is normalised to message lists at parse time. A plain-string ``prompt`` becomes
  one user message and a plain-string ``chosen``/``rejected`` one assistant message, so the
  tokenizer sees one shape per kind and the chat template decides every token.
- A record's kind follows from its fields: ``chosen``/``rejected`` make a preference pair, ``prompt``
  a GRPO prompt, ``messages`` a chat (or a prompt, when it has an ``answer`` or does not end with an
  assistant turn), ``text`` a document. A ``messages`` record can therefore be read as either kind,
  and ``--kind`` settles it.
- Checks reject wrong types, missing fields, unknown roles and empty documents, with the field
  named. Nothing is trimmed or rewritten: content strings are kept exactly as stored unless the
  caller asks for a Unicode normalisation (:func:`normalize_text`).
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Literal

from astrai_core import CHAT_ROLES

Kind = Literal["text", "chat", "preference", "prompt"]
RECORD_KINDS: tuple[str, ...] = ("text", "chat", "preference", "prompt")
NORMALIZATIONS: tuple[str, ...] = ("none", "nfc", "nfkc")

Messages = list[dict[str, str]]


class InvalidRecord(Exception):
    """A record that fails a check; the message says what is wrong, the reader adds file and line."""


@dataclass(frozen=True, eq=False)
class Record:
    """One record of the corpus: a document, a conversation, a preference pair or a prompt.

    Attributes:
        source: ``path:line`` of the record, for messages about it.
        size_bytes: Bytes the record takes in its file, used to report progress.
        kind: ``"text"``, ``"chat"``, ``"preference"`` or ``"prompt"``.
        text: The document of a text record.
        messages: The conversation of a chat record, as ``{"role", "content"}`` dicts.
        prompt: The prompt of a preference or prompt record, as messages.
        chosen: The preferred response turns of a preference record.
        rejected: The dispreferred response turns of a preference record.
        answer: The optional reference answer of a prompt record, for reward functions.
    """

    source: str
    size_bytes: int
    kind: Kind
    text: str | None = None
    messages: Messages | None = None
    prompt: Messages | None = None
    chosen: Messages | None = None
    rejected: Messages | None = None
    answer: str | None = None


def record_strings(record: Record) -> list[str]:
    """Return every string of a record in reading order: the document, or each message's content and the answer."""
    if record.text is not None:
        return [record.text]
    turns = [*(record.messages or []), *(record.prompt or []), *(record.chosen or []), *(record.rejected or [])]
    strings = [message["content"] for message in turns]
    return strings if record.answer is None else [*strings, record.answer]


def guess_kind(obj: dict) -> tuple[Kind, frozenset[str]] | None:
    """Return the kind a JSON object looks like and every kind it could be read as, or ``None``."""
    if "chosen" in obj or "rejected" in obj:
        return "preference", frozenset({"preference"})
    if "prompt" in obj:
        return "prompt", frozenset({"prompt"})
    if "messages" in obj:
        messages = obj["messages"]
        ends_with_answer = (
            isinstance(messages, list)
            and bool(messages)
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant"
        )
        guess: Kind = "prompt" if "answer" in obj or not ends_with_answer else "chat"
        return guess, frozenset({"chat", "prompt"})
    if "text" in obj:
        return "text", frozenset({"text"})
    return None


def normalize_text(text: str, normalize: str) -> str:
    """Apply the Unicode normalisation ``normalize`` (``"none"``, ``"nfc"`` or ``"nfkc"``) to ``text``."""
    if normalize == "none":
        return text
    return unicodedata.normalize(normalize.upper(), text)


def parse_json_record(raw: bytes, kind: str | None, source: str, normalize: str = "none") -> Record:
    """Decode and check one JSON line.

    Args:
        raw: The line's bytes.
        kind: The kind to read it as, or ``None`` to take the kind :func:`guess_kind` gives.
        source: ``path:line``, stored in the record.
        normalize: Unicode normalisation applied to every string of the record.

    Raises:
        InvalidRecord: The line is not UTF-8 or JSON, or the record fails a check of its kind.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRecord(f"invalid UTF-8 at column {error.start + 1} (the file must be UTF-8)") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidRecord(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")

    if kind is None:
        guessed = guess_kind(obj)
        if guessed is None:
            raise InvalidRecord(
                "record has none of the fields 'text', 'messages', 'prompt' or 'chosen'/'rejected' "
                f"(keys: {sorted(obj)})"
            )
        kind = guessed[0]
    fields = _PARSERS[kind](obj, normalize)
    return Record(source=source, size_bytes=len(raw), kind=kind, **fields)


def check_document(text: str) -> str:
    """Return ``text`` if it has a non-space character; raise :class:`InvalidRecord` otherwise."""
    if not text.strip():
        raise InvalidRecord("empty document")
    return text


def _parse_text(obj: dict, normalize: str) -> dict:
    text = _require(obj, "text")
    if not isinstance(text, str):
        raise InvalidRecord(f"'text' must be a string, got {type(text).__name__}")
    return {"text": check_document(normalize_text(text, normalize))}


def _parse_chat(obj: dict, normalize: str) -> dict:
    messages = _check_messages(_require(obj, "messages"), "messages", normalize)
    if not any(message["role"] == "assistant" for message in messages):
        raise InvalidRecord("conversation has no assistant message, so it has no tokens to learn from")
    return {"messages": messages}


def _parse_preference(obj: dict, normalize: str) -> dict:
    prompt = _check_turns(_require(obj, "prompt"), "prompt", "user", normalize)
    responses = {}
    for name in ("chosen", "rejected"):
        turns = _check_turns(_require(obj, name), name, "assistant", normalize)
        if not any(message["role"] == "assistant" for message in turns):
            raise InvalidRecord(f"'{name}' has no assistant message, so there is no response to score")
        responses[name] = turns
    return {"prompt": prompt, **responses}


def _parse_prompt(obj: dict, normalize: str) -> dict:
    if "prompt" in obj and "messages" in obj:
        raise InvalidRecord("record has both 'prompt' and 'messages'; keep one of them as the prompt")
    name = "prompt" if "prompt" in obj else "messages"
    prompt = _check_turns(_require(obj, name), name, "user", normalize)
    if prompt[-1]["role"] == "assistant":
        raise InvalidRecord(
            f"'{name}' ends with an assistant message; a prompt ends with the turn the model answers"
        )
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise InvalidRecord(
            f"'answer' must be a string or null, got {type(answer).__name__}; write it as {json.dumps(str(answer))}"
        )
    if answer is not None:
        answer = normalize_text(answer, normalize)
    return {"prompt": prompt, "answer": answer}


_PARSERS = {"text": _parse_text, "chat": _parse_chat, "preference": _parse_preference, "prompt": _parse_prompt}


def _require(obj: dict, name: str) -> object:
    if name not in obj:
        raise InvalidRecord(f"missing '{name}' field (keys: {sorted(obj)})")
    return obj[name]


def _check_turns(value: object, name: str, role: str, normalize: str) -> Messages:
    """Check a field that is a non-empty string (one ``role`` message) or a list of messages."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRecord(f"'{name}' is an empty string")
        return [{"role": role, "content": normalize_text(value, normalize)}]
    return _check_messages(value, name, normalize)


def _check_messages(value: object, name: str, normalize: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise InvalidRecord(
            f"'{name}' must be a non-empty list of {{'role', 'content'}} objects, got {value!r:.60}"
        )
    checked = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidRecord(f"{name}[{index}] must be an object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise InvalidRecord(f"{name}[{index}].role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidRecord(f"{name}[{index}].content must be a string, got {type(content).__name__}")
        checked.append({"role": role, "content": normalize_text(content, normalize)})
    return checked
