"""PackedDataset: examples and labels, memory mapping, tokenizer checks and invalid files."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from astrai_core import Tokenizer
from astrai_data import IGNORE_INDEX, Corpus, PackedDataset, PackedFileError, pack_corpus, packing
from torch.utils.data import DataLoader


@pytest.fixture
def text_pack(
    tmp_path: Path, tokenizer: Tokenizer, documents: list[str], write_text_corpus: Callable
) -> Path:
    corpus = Corpus(write_text_corpus(tmp_path / "corpus", documents))
    pack_corpus(corpus, tokenizer, tmp_path / "text.arrow", seq_len=16, workers=1)
    return tmp_path / "text.arrow"


@pytest.fixture
def chat_pack(tmp_path: Path, tokenizer: Tokenizer, conversations: list[dict], write_jsonl: Callable) -> Path:
    corpus = Corpus(write_jsonl(tmp_path / "chat.jsonl", conversations))
    pack_corpus(corpus, tokenizer, tmp_path / "chat.arrow", seq_len=80, workers=1)
    return tmp_path / "chat.arrow"


def test_chat_labels_ignore_unmasked_targets(chat_pack: Path) -> None:
    dataset = PackedDataset(chat_pack)

    for index in range(len(dataset)):
        ids, loss_mask = dataset.window(index)
        example = dataset[index]
        assert example["input_ids"].dtype == torch.int64
        assert example["labels"].dtype == torch.int64
        assert example["input_ids"].tolist() == ids[:-1].tolist()
        targets = zip(ids[1:].tolist(), loss_mask[1:].tolist(), strict=True)
        expected = [token if bit else IGNORE_INDEX for token, bit in targets]
        assert example["labels"].tolist() == expected
    assert dataset.kind == "chat"
    assert dataset.seq_len == 80
    assert len(dataset) == dataset.metadata["counts"]["windows"]


def test_text_labels_ignore_only_padding(text_pack: Path, tokenizer: Tokenizer) -> None:
    dataset = PackedDataset(text_pack)

    labels = torch.cat([dataset[index]["labels"] for index in range(len(dataset))])
    last = dataset[-1]

    ignored = int((labels == IGNORE_INDEX).sum())
    assert ignored == int((last["input_ids"] == tokenizer.pad_id).sum()) + 1  # padded targets, last window
    assert (dataset[0]["labels"] != IGNORE_INDEX).all()
    assert last["labels"][-1] == IGNORE_INDEX


def test_window_index_range(text_pack: Path) -> None:
    dataset = PackedDataset(text_pack)

    assert torch.equal(dataset[-1]["input_ids"], dataset[len(dataset) - 1]["input_ids"])
    with pytest.raises(IndexError, match=f"window {len(dataset)} out of range"):
        dataset[len(dataset)]
    with pytest.raises(IndexError):
        dataset[-len(dataset) - 1]


def test_open_is_memory_mapped(text_pack: Path) -> None:
    allocated = pa.total_allocated_bytes()

    dataset = PackedDataset(text_pack)
    ids, loss_mask = dataset.window(1)

    assert pa.total_allocated_bytes() == allocated  # no Arrow buffer was read into memory
    assert not ids.flags.owndata
    assert not ids.flags.writeable
    assert not loss_mask.flags.owndata
    assert not loss_mask.flags.writeable
    assert dataset[1]["input_ids"].tolist() == ids[:-1].tolist()


def test_many_record_batches(
    tmp_path: Path,
    tokenizer: Tokenizer,
    documents: list[str],
    write_text_corpus: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packing, "BATCH_TOKENS", 3 * 9)  # three windows of seq_len 8 per batch
    corpus = Corpus(write_text_corpus(tmp_path / "corpus", documents))
    pack_corpus(corpus, tokenizer, tmp_path / "out.arrow", seq_len=8, workers=1)
    with pa.memory_map(str(tmp_path / "out.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    rows = np.array(table.column("input_ids").to_pylist())

    dataset = PackedDataset(tmp_path / "out.arrow")

    assert table.column("input_ids").num_chunks > 3
    assert [dataset.window(index)[0].tolist() for index in range(len(dataset))] == rows.tolist()


def test_pickle_and_data_loader(chat_pack: Path) -> None:
    dataset = PackedDataset(chat_pack)

    copy = pickle.loads(pickle.dumps(dataset))
    batch = next(iter(DataLoader(dataset, batch_size=2)))

    assert len(copy) == len(dataset)
    assert torch.equal(copy[0]["labels"], dataset[0]["labels"])
    assert batch["input_ids"].shape == (min(2, len(dataset)), 80)


def test_check_tokenizer(
    text_pack: Path, tmp_path: Path, tokenizer: Tokenizer, other_tokenizer: Tokenizer, documents: list[str]
) -> None:
    dataset = PackedDataset(text_pack)
    smaller = Tokenizer.train(documents * 3, tmp_path / "smaller.model", vocab_size=500, num_threads=1)

    dataset.check_tokenizer(tokenizer)
    with pytest.raises(PackedFileError, match=r"text\.arrow was packed with another tokenizer \(sha256"):
        dataset.check_tokenizer(other_tokenizer)
    with pytest.raises(PackedFileError, match="vocabulary of 512 tokens, but the tokenizer has 500"):
        dataset.check_tokenizer(smaller)


def write_arrow(path: Path, table: pa.Table) -> Path:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def test_rejects_files_that_are_not_packs(tmp_path: Path, text_pack: Path) -> None:
    packed = pa.ipc.open_file(pa.memory_map(str(text_pack))).read_all()
    metadata = json.loads(packed.schema.metadata[b"astrai_data"])
    plain = write_arrow(tmp_path / "plain.arrow", packed.replace_schema_metadata(None))
    one_column = write_arrow(tmp_path / "one-column.arrow", packed.select(["input_ids"]))
    metadata["counts"]["windows"] += 1
    miscounted = write_arrow(
        tmp_path / "miscounted.arrow",
        packed.replace_schema_metadata({b"astrai_data": json.dumps(metadata).encode()}),
    )
    (tmp_path / "notes.arrow").write_text("not arrow")

    with pytest.raises(PackedFileError, match=r"plain\.arrow is not an AstrAI packed file"):
        PackedDataset(plain)
    with pytest.raises(PackedFileError, match=r"one-column\.arrow: column 'loss_mask' is missing"):
        PackedDataset(one_column)
    with pytest.raises(PackedFileError, match=r"miscounted\.arrow has \d+ windows but its metadata records"):
        PackedDataset(miscounted)
    with pytest.raises(PackedFileError, match=r"notes\.arrow is not an Arrow IPC file"):
        PackedDataset(tmp_path / "notes.arrow")
    with pytest.raises(FileNotFoundError, match="astrai-data pack"):
        PackedDataset(tmp_path / "absent.arrow")
