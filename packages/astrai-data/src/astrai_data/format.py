"""The packed file format: an Arrow IPC file of fixed-length token windows plus JSON metadata.

Design choices:
- One row per window, two columns: ``input_ids`` as ``fixed_size_list<int32>[seq_len + 1]`` and
  ``loss_mask`` as ``fixed_size_list<uint8>[seq_len + 1]``. Fixed-size lists store their values as
  one flat buffer per record batch, so a reader memory-maps the file and views a batch as a
  ``(rows, seq_len + 1)`` numpy array without copying.
- Windows are ``seq_len + 1`` tokens long so that a window gives both the model input
  (``window[:-1]``) and the next-token targets (``window[1:]``).
- Everything a reader needs to trust the file is in the schema metadata, as one JSON object under
  the key ``astrai_data``. It records the record kind, ``seq_len``, the tokenizer's vocabulary size,
  special ids and SHA-256 fingerprint, and the counts of the packing run. It also records the
  astrai-data version and a format number that changes when the layout does.
"""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa
from astrai_core import Tokenizer

FORMAT_VERSION = 1
METADATA_KEY = b"astrai_data"
INPUT_IDS = "input_ids"
LOSS_MASK = "loss_mask"

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
    "astrai_data_version",
    "counts",
)
COUNT_FIELDS = ("documents", "tokens", "windows", "skipped", "truncated", "dropped")


class PackedFileError(ValueError):
    """A file that is not a valid AstrAI pack, or that does not match the tokenizer in use."""


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Return the SHA-256 hex digest of the tokenizer's serialised SentencePiece model."""
    return hashlib.sha256(tokenizer.model_proto).hexdigest()


def pack_schema(seq_len: int, metadata: dict | None = None) -> pa.Schema:
    """Build the schema of a packed file with windows of ``seq_len + 1`` tokens.

    Args:
        seq_len: Model context length; each row stores ``seq_len + 1`` tokens.
        metadata: The JSON metadata to attach under :data:`METADATA_KEY`, or ``None`` for none.
    """
    schema = pa.schema(
        [
            pa.field(INPUT_IDS, pa.list_(pa.int32(), seq_len + 1), nullable=False),
            pa.field(LOSS_MASK, pa.list_(pa.uint8(), seq_len + 1), nullable=False),
        ]
    )
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
    hint = "pack the corpus with 'astrai-data pack CORPUS OUT.arrow --tokenizer TOK.model'"
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise PackedFileError(
            f"{path} is not an AstrAI packed file (no '{METADATA_KEY.decode()}' metadata); {hint}"
        )
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise PackedFileError(f"{path}: invalid packed-file metadata ({error}); {hint}") from None

    missing = [name for name in METADATA_FIELDS if name not in metadata]
    missing += [f"counts.{name}" for name in COUNT_FIELDS if name not in metadata.get("counts", {})]
    if missing:
        raise PackedFileError(f"{path}: packed-file metadata lacks {missing}; {hint}")
    if metadata["format"] != FORMAT_VERSION:
        raise PackedFileError(
            f"{path} has packed format {metadata['format']!r}, but this astrai-data reads format "
            f"{FORMAT_VERSION}; pack the corpus again with this version"
        )

    expected = pack_schema(metadata["seq_len"])
    for field in expected:
        if schema.get_field_index(field.name) < 0 or schema.field(field.name).type != field.type:
            raise PackedFileError(
                f"{path}: column {field.name!r} is missing or not of type {field.type}; {hint}"
            )
    return metadata
