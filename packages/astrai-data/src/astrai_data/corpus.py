"""Reading a corpus folder as a stream of text documents or chat conversations.

Design choices:
- A corpus is a folder, searched recursively, or a single file. A ``.txt`` file is one document. A
  ``.jsonl`` file has one record a line: ``{"text": "..."}`` or
  ``{"messages": [{"role": "user", "content": "..."}, ...]}``. Other files (a README, metadata tables)
  are ignored, so they can sit next to the data.
- Files are read in sorted path order, so a folder always yields its records in the same order and
  packing it twice gives the same file.
- Text is kept exactly as stored: no newline translation, no stripping, no Unicode normalisation.
  Decoding the packed tokens therefore reproduces each document character for character.
- The kind of a ``.jsonl`` file is the kind of its first record that has a ``text`` or ``messages``
  field. With ``kind="auto"`` every file must have the same kind. With ``kind="text"`` or
  ``kind="chat"`` the files of the other kind are left out, and ``kind="any"`` reads both kinds
  (tokenizer training wants every string in the corpus).
- An invalid record (invalid UTF-8 or JSON, a missing or wrongly typed field, an empty document, a
  conversation without an assistant message) raises :class:`CorpusError` naming the file and line.
  With ``skip_invalid`` it is skipped and counted instead, and the first few are logged.
- Reading streams: ``.jsonl`` files line by line and ``.txt`` files one at a time, so memory contains
  one document at a time, however large the corpus is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from astrai_core import CHAT_ROLES

logger = logging.getLogger(__name__)

Kind = Literal["text", "chat"]
CorpusKind = Literal["auto", "text", "chat", "any"]
CORPUS_KINDS: tuple[str, ...] = ("auto", "text", "chat", "any")
CORPUS_SUFFIXES = (".txt", ".jsonl")

# Skipped records past this many are counted but not logged one by one.
_MAX_LOGGED_SKIPS = 10
_SKIP_HINT = "fix the record, or pass --skip-invalid (skip_invalid=True) to skip invalid records"


class CorpusError(ValueError):
    """Invalid corpus input: a bad record (the message names its file and line) or an unusable folder."""


class _InvalidRecord(Exception):
    """Raised by the record parsers with what is wrong. The reader adds the file and line."""


@dataclass(frozen=True, eq=False)
class Record:
    """One document of the corpus: a text or a chat conversation.

    Attributes:
        source: ``path:line`` of the record, for messages about it.
        size_bytes: Bytes the record takes in its file, used to report progress.
        text: The document, for a text record; ``None`` for a chat record.
        messages: The conversation as ``{"role", "content"}`` dicts, for a chat record; else ``None``.
    """

    source: str
    size_bytes: int
    text: str | None = None
    messages: list[dict[str, str]] | None = None

    @property
    def kind(self) -> Kind:
        return "text" if self.text is not None else "chat"


def find_corpus_files(root: str | os.PathLike) -> list[Path]:
    """List the ``.txt`` and ``.jsonl`` files of a corpus folder (recursively) in sorted order.

    Args:
        root: A folder, or a single ``.txt``/``.jsonl`` file.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        CorpusError: ``root`` is a file of another type, or the folder has no corpus files.
    """
    root = Path(root)
    if root.is_file():
        if root.suffix not in CORPUS_SUFFIXES:
            raise CorpusError(f"{root} is not a .txt or .jsonl file; pass a corpus folder or one such file")
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"corpus {root} not found; pass a folder of .txt and .jsonl files")
    files = sorted(path for path in root.rglob("*") if path.suffix in CORPUS_SUFFIXES and path.is_file())
    if not files:
        raise CorpusError(
            f"no .txt or .jsonl files under {root}; put one document per .txt file or one JSON record "
            "per line in .jsonl files"
        )
    return files


class Corpus:
    """The records of a corpus folder, read lazily in a fixed order.

    Iterating yields :class:`Record` objects. Each iteration reads the files again and resets
    :attr:`skipped`.

    Attributes:
        root: The folder or file given.
        kind: ``"text"`` or ``"chat"`` after resolving ``"auto"``; ``"any"`` if requested.
        files: The files that are read, in order.
        left_out: Files whose records are of the other kind than :attr:`kind`.
        total_bytes: Size of :attr:`files` in bytes, the length of a progress bar.
        skipped: Invalid records skipped by the last (or current) iteration.
    """

    def __init__(self, root: str | os.PathLike, kind: CorpusKind = "auto", skip_invalid: bool = False):
        """Find the files of ``root`` and resolve the record kind.

        Args:
            root: A corpus folder, or a single ``.txt``/``.jsonl`` file.
            kind: ``"text"`` or ``"chat"`` to read only that kind, ``"auto"`` to detect it (the files
                must agree), or ``"any"`` to read both kinds.
            skip_invalid: Skip and count invalid records instead of raising :class:`CorpusError`.

        Raises:
            CorpusError: Unknown ``kind``, no corpus files, or ``"auto"`` on a folder that mixes
                kinds or has no recognisable record.
        """
        if kind not in CORPUS_KINDS:
            raise CorpusError(f"kind={kind!r} is not supported; use one of {list(CORPUS_KINDS)}")
        self.root = Path(root)
        self.skip_invalid = skip_invalid
        self.skipped = 0

        candidates = find_corpus_files(self.root)
        file_kinds = {path: _detect_file_kind(path) for path in candidates}
        self.kind: str = _resolve_kind(self.root, kind, file_kinds)
        if self.kind == "any":
            self.files = candidates
        else:
            # A file with no recognisable record is still read, so its bad lines are reported.
            self.files = [path for path in candidates if file_kinds[path] in (self.kind, None)]
        selected = set(self.files)
        self.left_out = [path for path in candidates if path not in selected]
        self.total_bytes = sum(path.stat().st_size for path in self.files)

    def __iter__(self) -> Iterator[Record]:
        self.skipped = 0
        record_kind = None if self.kind == "any" else self.kind
        for path in self.files:
            if path.suffix == ".txt":
                records = _read_txt(path)
            else:
                records = _read_jsonl(path, record_kind)
            for record in records:
                if isinstance(record, Record):
                    yield record
                else:
                    self._skip(record)

    def _skip(self, problem: str) -> None:
        if not self.skip_invalid:
            raise CorpusError(f"{problem}; {_SKIP_HINT}")
        self.skipped += 1
        if self.skipped <= _MAX_LOGGED_SKIPS:
            logger.warning("skipping %s", problem)
        if self.skipped == _MAX_LOGGED_SKIPS:
            logger.warning("further invalid records are skipped without a message; the summary counts them")


def _resolve_kind(root: Path, kind: CorpusKind, file_kinds: dict[Path, Kind | None]) -> str:
    if kind != "auto":
        return kind
    found: dict[str, Path] = {}
    for path, file_kind in file_kinds.items():
        if file_kind is not None:
            found.setdefault(file_kind, path)
    if len(found) > 1:
        raise CorpusError(
            f"corpus {root} mixes text and chat records ({found['text']} has text, {found['chat']} has "
            "chat); pass --kind text or --kind chat (kind='text' or 'chat') to pack one kind"
        )
    if not found:
        raise CorpusError(
            f"no record under {root} has a 'text' or 'messages' field, so its kind is unknown; "
            "fix the records or pass --kind"
        )
    return next(iter(found))


def _detect_file_kind(path: Path) -> Kind | None:
    """Return the kind of the file's first recognisable record, or ``None`` when it has none."""
    if path.suffix == ".txt":
        return "text"
    with path.open("rb") as file:
        for raw in file:
            try:
                obj = json.loads(raw)
            except ValueError:  # invalid JSON or UTF-8, reported when the file is read
                continue
            if isinstance(obj, dict):
                if "messages" in obj:
                    return "chat"
                if "text" in obj:
                    return "text"
    return None


def _read_txt(path: Path) -> Iterator[Record | str]:
    """Yield the file's one document, or a problem string naming the file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        yield f"{path}:{line}: invalid UTF-8 at byte {error.start} (the file must be UTF-8)"
        return
    if not text.strip():
        yield f"{path}:1: empty document"
        return
    yield Record(source=f"{path}:1", size_bytes=len(data), text=text)


def _read_jsonl(path: Path, kind: str | None) -> Iterator[Record | str]:
    """Yield the file's records, or a problem string naming the file and line for each invalid one."""
    with path.open("rb") as file:
        for line_number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            source = f"{path}:{line_number}"
            try:
                yield _parse_json_line(raw, kind, source)
            except _InvalidRecord as problem:
                yield f"{source}: {problem}"


def _parse_json_line(raw: bytes, kind: str | None, source: str) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _InvalidRecord(f"invalid UTF-8 at column {error.start + 1} (the file must be UTF-8)") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as error:
        raise _InvalidRecord(f"invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(obj, dict):
        raise _InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")

    if kind is None:
        if "messages" in obj:
            kind = "chat"
        elif "text" in obj:
            kind = "text"
        else:
            raise _InvalidRecord(f"record has neither a 'text' nor a 'messages' field (keys: {sorted(obj)})")
    if kind == "text":
        return Record(source=source, size_bytes=len(raw), text=_check_text(obj))
    return Record(source=source, size_bytes=len(raw), messages=_check_messages(obj))


def _check_text(obj: dict) -> str:
    if "text" not in obj:
        raise _InvalidRecord(f"missing 'text' field (keys: {sorted(obj)})")
    text = obj["text"]
    if not isinstance(text, str):
        raise _InvalidRecord(f"'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _InvalidRecord("empty document")
    return text


def _check_messages(obj: dict) -> list[dict[str, str]]:
    if "messages" not in obj:
        raise _InvalidRecord(f"missing 'messages' field (keys: {sorted(obj)})")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise _InvalidRecord(
            f"'messages' must be a non-empty list of {{'role', 'content'}} objects, got {messages!r:.60}"
        )
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _InvalidRecord(f"messages[{index}] must be an object, got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise _InvalidRecord(f"messages[{index}].role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise _InvalidRecord(f"messages[{index}].content must be a string, got {type(content).__name__}")
        checked.append({"role": role, "content": content})
    if not any(message["role"] == "assistant" for message in checked):
        raise _InvalidRecord("conversation has no assistant message, so it has no tokens to learn from")
    return checked
