"""Reading a corpus folder as a stream of records of one kind.

Design choices:
- A corpus is a folder, searched recursively, or a single file. A ``.txt`` file is one document. A
  ``.jsonl`` file has one record a line, of the kinds :mod:`astrai_data.records` describes. Other
  files (a README, metadata tables) are ignored, so they can sit next to the data.
- Files are read in sorted path order, so a folder always yields its records in the same order and
  packing it twice gives the same file.
- Text is kept exactly as stored: no newline translation, no stripping, and no Unicode
  normalisation unless ``normalize`` asks for one. Decoding the packed tokens therefore reproduces
  each document character for character.
- The kind of a ``.jsonl`` file is the kind of its first recognisable record. With ``kind="auto"``
  every file must have the same kind, and :attr:`Corpus.detected` says the kind was detected. With
  an explicit kind, the files that cannot be read as that kind are left out. ``kind="any"`` reads
  every record with the kind its fields suggest (tokenizer training wants every string).
- An invalid record (invalid UTF-8 or JSON, a missing or wrongly typed field, an empty document, a
  conversation without an assistant message) raises :class:`CorpusError` naming the file and line.
  With ``skip_invalid`` it is skipped and counted instead, and the first few are logged.
- Reading streams: ``.jsonl`` files line by line and ``.txt`` files one at a time, so memory contains
  one document at a time, however large the corpus is.
- Reading has two halves. :meth:`Corpus.raw_records` only locates records: a ``.txt`` path, or a
  ``.jsonl`` line's bytes. :func:`parse_raw_record` decodes and checks one. Iterating a corpus does
  both in turn, while packing does the first in the main process and the second, with the
  tokenizing, in its worker processes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .records import (
    NORMALIZATIONS,
    RECORD_KINDS,
    InvalidRecord,
    Record,
    check_document,
    guess_kind,
    normalize_text,
    parse_json_record,
)

logger = logging.getLogger(__name__)

CorpusKind = Literal["auto", "text", "chat", "preference", "prompt", "any"]
CORPUS_KINDS: tuple[str, ...] = ("auto", *RECORD_KINDS, "any")
CORPUS_SUFFIXES = (".txt", ".jsonl")

# Skipped records past this many are counted but not logged one by one.
_MAX_LOGGED_SKIPS = 10
_SKIP_HINT = "fix the record, or pass --skip-invalid (skip_invalid=True) to skip invalid records"


class CorpusError(ValueError):
    """Invalid corpus input: a bad record (the message names its file and line) or an unusable folder."""


@dataclass(frozen=True)
class RawRecord:
    """A record located but not yet decoded, small enough to send to a worker process.

    Attributes:
        path: The file.
        line: The record's line number (1 for a ``.txt`` file).
        data: The ``.jsonl`` line's bytes, or ``None`` for a ``.txt`` file, which the parser reads.
        size_bytes: Bytes the record takes in its file, used to report progress.
    """

    path: str
    line: int
    data: bytes | None
    size_bytes: int


def parse_raw_record(raw: RawRecord, kind: str | None, normalize: str = "none") -> Record | str:
    """Decode and check a raw record.

    Args:
        raw: The record from :meth:`Corpus.raw_records`.
        kind: The kind to read a ``.jsonl`` record as, or ``None`` for the kind its fields suggest.
        normalize: Unicode normalisation applied to every string.

    Returns:
        The record, or a problem string that names the file and line.
    """
    source = f"{raw.path}:{raw.line}"
    if raw.data is not None:
        try:
            return parse_json_record(raw.data, kind, source, normalize)
        except InvalidRecord as problem:
            return f"{source}: {problem}"

    data = Path(raw.path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        return f"{raw.path}:{line}: invalid UTF-8 at byte {error.start} (the file must be UTF-8)"
    try:
        text = check_document(normalize_text(text, normalize))
    except InvalidRecord as problem:
        return f"{source}: {problem}"
    return Record(source=source, size_bytes=len(data), kind="text", text=text)


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
    # Sorting by parts gives Path order without Path's slower rich comparison.
    found = (path for path in root.rglob("*") if path.suffix in CORPUS_SUFFIXES and path.is_file())
    files = sorted(found, key=lambda path: path.parts)
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
        kind: ``"text"``, ``"chat"``, ``"preference"`` or ``"prompt"`` after resolving ``"auto"``;
            ``"any"`` if requested.
        detected: Whether :attr:`kind` was detected from the files (``kind="auto"``).
        normalize: The Unicode normalisation applied to every string: ``"none"``, ``"nfc"`` or ``"nfkc"``.
        files: The files that are read, in order.
        left_out: Files whose records cannot be read as :attr:`kind`.
        total_bytes: Size of :attr:`files` in bytes, the length of a progress bar.
        skipped: Invalid records skipped by the last (or current) iteration.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        kind: CorpusKind = "auto",
        skip_invalid: bool = False,
        normalize: str = "none",
    ):
        """Find the files of ``root`` and resolve the record kind.

        Args:
            root: A corpus folder, or a single ``.txt``/``.jsonl`` file.
            kind: One of the record kinds to read only that kind, ``"auto"`` to detect it (the files
                must agree), or ``"any"`` to read every kind.
            skip_invalid: Skip and count invalid records instead of raising :class:`CorpusError`.
            normalize: ``"nfc"`` or ``"nfkc"`` to normalise every string (NFKC turns full-width
                punctuation into ASCII), or ``"none"`` to keep the text as stored.

        Raises:
            CorpusError: Unknown ``kind`` or ``normalize``, no corpus files, or ``"auto"`` on a
                folder that mixes kinds or has no recognisable record.
        """
        if kind not in CORPUS_KINDS:
            raise CorpusError(f"kind={kind!r} is not supported; use one of {list(CORPUS_KINDS)}")
        if normalize not in NORMALIZATIONS:
            raise CorpusError(f"normalize={normalize!r} is not supported; use one of {list(NORMALIZATIONS)}")
        self.root = Path(root)
        self.skip_invalid = skip_invalid
        self.normalize = normalize
        self.skipped = 0

        candidates = find_corpus_files(self.root)
        file_kinds = {path: _detect_file_kind(path) for path in candidates}
        self.detected = kind == "auto"
        self.kind: str = _resolve_kind(self.root, kind, file_kinds)
        if self.kind == "any":
            self.files = candidates
        else:
            # A file with no recognisable record is still read, so its bad lines are reported.
            self.files = [
                path for path in candidates if file_kinds[path] is None or self.kind in file_kinds[path][1]
            ]
        selected = set(self.files)
        self.left_out = [path for path in candidates if path not in selected]
        self._sizes = {path: path.stat().st_size for path in self.files}
        self.total_bytes = sum(self._sizes.values())

    @property
    def record_kind(self) -> str | None:
        """The kind every record is read as, or ``None`` when each record's fields decide (``"any"``)."""
        return None if self.kind == "any" else self.kind

    def __iter__(self) -> Iterator[Record]:
        for raw in self.raw_records():
            record = parse_raw_record(raw, self.record_kind, self.normalize)
            if isinstance(record, Record):
                yield record
            else:
                self.report_invalid(record)

    def raw_records(self) -> Iterator[RawRecord]:
        """Yield every record's location and undecoded bytes, in order, and reset :attr:`skipped`.

        Pass each to :func:`parse_raw_record`, and its problems to :meth:`report_invalid`.
        """
        self.skipped = 0
        for path in self.files:
            if path.suffix == ".txt":
                yield RawRecord(str(path), 1, None, self._sizes[path])
                continue
            with path.open("rb") as file:
                for line_number, data in enumerate(file, start=1):
                    if data.strip():
                        yield RawRecord(str(path), line_number, data, len(data))

    def report_invalid(self, problem: str) -> None:
        """Raise :class:`CorpusError` for an invalid record, or count and log it with ``skip_invalid``."""
        if not self.skip_invalid:
            raise CorpusError(f"{problem}; {_SKIP_HINT}")
        self.skipped += 1
        if self.skipped <= _MAX_LOGGED_SKIPS:
            logger.warning("skipping %s", problem)
        if self.skipped == _MAX_LOGGED_SKIPS:
            logger.warning("further invalid records are skipped without a message; the summary counts them")


FileKind = tuple[str, frozenset[str]]
"""A file's detected kind and every kind its records can be read as."""


def _resolve_kind(root: Path, kind: str, file_kinds: dict[Path, FileKind | None]) -> str:
    if kind != "auto":
        return kind
    found: dict[str, Path] = {}
    for path, file_kind in file_kinds.items():
        if file_kind is not None:
            found.setdefault(file_kind[0], path)
    if len(found) > 1:
        examples = ", ".join(f"{path} has {name}" for name, path in found.items())
        choices = " or ".join(f"--kind {name}" for name in sorted(found))
        raise CorpusError(f"corpus {root} mixes record kinds ({examples}); pass {choices} to pack one kind")
    if not found:
        raise CorpusError(
            f"no record under {root} has a 'text', 'messages', 'prompt' or 'chosen'/'rejected' field, "
            "so its kind is unknown; fix the records or pass --kind"
        )
    return next(iter(found))


def _detect_file_kind(path: Path) -> FileKind | None:
    """Return the kinds of the file's first recognisable record, or ``None`` when it has none."""
    if path.suffix == ".txt":
        return "text", frozenset({"text"})
    with path.open("rb") as file:
        for raw in file:
            try:
                obj = json.loads(raw)
            except ValueError:  # invalid JSON or UTF-8, reported when the file is read
                continue
            if isinstance(obj, dict) and (guessed := guess_kind(obj)) is not None:
                return guessed
    return None
