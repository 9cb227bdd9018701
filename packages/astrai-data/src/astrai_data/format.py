"""The packed file format: an Arrow IPC file with one row per window, pair or prompt, plus JSON metadata.

Design choices:
- The columns depend on the record kind (:func:`kind_columns`). Text and chat files have one row per
  window, with ``input_ids``, ``loss_mask`` and ``position_ids``, each a
  ``fixed_size_list[seq_len + 1]``. Preference files have one row per pair, with the chosen and the
  rejected sequence and their masks as fixed-size lists of the same width. Prompt files have one
  row per prompt, with ``prompt_ids`` as a variable-length ``list<int32>`` (at most ``seq_len``
  tokens) and the reference ``answer`` as a nullable string.
- Fixed-size lists store their values as one flat buffer per record batch, so a reader memory-maps
  the file and views a batch as a ``(rows, seq_len + 1)`` numpy array without copying.
- Windows are ``seq_len + 1`` tokens long so that a window gives both the model input
  (``window[:-1]``) and the next-token targets (``window[1:]``).
- ``position_ids`` restart at 0 at every document start, window start and padding start. They are
  the RoPE positions for training and mark the document boundaries that attention must not cross.
- Everything a reader needs to trust the file is in the schema metadata, as one JSON object under
  the key ``astrai_data``. It records the record kind, ``seq_len``, the tokenizer's vocabulary size,
  special ids and SHA-256 fingerprint, the too-long policy, the text normalisation, the counts of
  the packing run, the astrai-data version, and a format number that changes when the layout does.
"""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
from astrai_core import Tokenizer

FORMAT_VERSION = 2
METADATA_KEY = b"astrai_data"
KINDS: tuple[str, ...] = ("text", "chat", "preference", "prompt")
WINDOW_KINDS: tuple[str, ...] = ("text", "chat")

# Fields every packed file's metadata must have; ``counts`` maps each of COUNT_FIELDS to an int.
METADATA_FIELDS = (
    "format",
    "kind",
    "seq_len",
    "vocab_size",
    "pad_id",
    "eos_id",
    "bos_id",
    "tokenizer_sha256",
    "too_long",
    "normalize",
    "astrai_data_version",
    "counts",
)
COUNT_FIELDS = (
    "documents",
    "windows",
    "tokens_in",
    "tokens",
    "truncated",
    "truncated_tokens",
    "dropped",
    "dropped_tokens",
    "skipped",
)
_HINT = "pack the corpus with 'astrai-data pack CORPUS OUT.arrow --tokenizer TOK.model'"


class PackedFileError(ValueError):
    """A file that is not a valid AstrAI pack, or that does not match the tokenizer in use."""


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Return the SHA-256 hex digest of the tokenizer's serialised SentencePiece model."""
    return hashlib.sha256(tokenizer.model_proto).hexdigest()


def kind_columns(kind: str, seq_len: int) -> list[pa.Field]:
    """Return the columns of a packed file of ``kind`` with windows of ``seq_len + 1`` tokens."""
    window = seq_len + 1

    def fixed(name: str, value_type: pa.DataType) -> pa.Field:
        return pa.field(name, pa.list_(value_type, window), nullable=False)

    if kind in WINDOW_KINDS:
        return [fixed("input_ids", pa.int32()), fixed("loss_mask", pa.uint8()), fixed("position_ids", pa.int32())]
    if kind == "preference":
        return [
            fixed("chosen_ids", pa.int32()),
            fixed("chosen_mask", pa.uint8()),
            fixed("rejected_ids", pa.int32()),
            fixed("rejected_mask", pa.uint8()),
        ]
    if kind == "prompt":
        return [pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False), pa.field("answer", pa.string())]
    raise ValueError(f"no packed layout for kind {kind!r}; use one of {list(KINDS)}")


def pack_schema(kind: str, seq_len: int, metadata: dict | None = None) -> pa.Schema:
    """Build the schema of a packed file.

    Args:
        kind: The record kind, one of :data:`KINDS`.
        seq_len: Model context length (the maximum prompt length for prompt files).
        metadata: The JSON metadata to attach under :data:`METADATA_KEY`, or ``None`` for none.
    """
    schema = pa.schema(kind_columns(kind, seq_len))
    if metadata is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    return schema


def read_metadata(schema: pa.Schema, path: str | os.PathLike) -> dict:
    """Return the AstrAI metadata of a packed file's schema after checking columns and fields.

    Args:
        schema: The schema read from the file.
        path: The file, named in error messages.

    Raises:
        PackedFileError: The schema lacks the metadata, a metadata field or a column, or has a
            format number this version cannot read.
    """
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise PackedFileError(
            f"{path} is not an AstrAI packed file (no '{METADATA_KEY.decode()}' metadata); {_HINT}"
        )
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise PackedFileError(f"{path}: invalid packed-file metadata ({error}); {_HINT}") from None
    if not isinstance(metadata, dict):
        raise PackedFileError(f"{path}: packed-file metadata is not a JSON object; {_HINT}")

    version = metadata.get("format")
    if version != FORMAT_VERSION:
        written_by = metadata.get("astrai_data_version", "an unknown version")
        raise PackedFileError(
            f"{path} has packed format {version!r} (written by astrai-data {written_by}), but this "
            f"astrai-data reads format {FORMAT_VERSION}, which adds position_ids so that packed "
            f"documents do not attend to each other; {_HINT} to pack it again"
        )
    missing = [name for name in METADATA_FIELDS if name not in metadata]
    missing += [f"counts.{name}" for name in COUNT_FIELDS if name not in metadata.get("counts", {})]
    if missing:
        raise PackedFileError(f"{path}: packed-file metadata lacks {missing}; {_HINT}")
    if metadata["kind"] not in KINDS:
        raise PackedFileError(f"{path}: unknown record kind {metadata['kind']!r} in its metadata; {_HINT}")

    for field in kind_columns(metadata["kind"], metadata["seq_len"]):
        if schema.get_field_index(field.name) < 0 or schema.field(field.name).type != field.type:
            raise PackedFileError(
                f"{path}: column {field.name!r} is missing or not of type {field.type}; {_HINT}"
            )
    return metadata
