"""The datasets: examples and labels of every kind, memory mapping, tokenizer checks and invalid files."""

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
from astrai_data import (
    IGNORE_INDEX,
    Corpus,
    PackedDataset,
    PackedFileError,
    PreferenceDataset,
    PromptDataset,
    mapped_file,
    open_dataset,
    pack_corpus,
    writer,
)
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
    with pytest.raises(IndexError, match=f"row {len(dataset)} out of range"):
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
    monkeypatch.setattr(writer, "BATCH_TOKENS", 3 * 9)  # three windows of seq_len 8 per batch
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
    with pytest.raises(PackedFileError, match=r"miscounted\.arrow has \d+ rows but its metadata records"):
        PackedDataset(miscounted)
    with pytest.raises(PackedFileError, match=r"notes\.arrow is not an Arrow IPC file"):
        PackedDataset(tmp_path / "notes.arrow")
    with pytest.raises(FileNotFoundError, match="astrai-data pack"):
        PackedDataset(tmp_path / "absent.arrow")


def test_window_documents_and_positions(text_pack: Path, tokenizer: Tokenizer) -> None:
    dataset = PackedDataset(text_pack)

    for index in range(len(dataset)):
        example = dataset[index]
        ids, positions, documents = example["input_ids"], example["position_ids"], example["document_ids"]
        starts = (positions == 0).nonzero().flatten().tolist()
        assert starts[0] == 0
        for start in starts[1:]:
            # A new segment starts at bos, or at the padding after the last document.
            assert ids[start] in (tokenizer.bos_id, tokenizer.pad_id)
        assert documents.tolist() == (torch.cumsum(positions == 0, 0) - 1).tolist()
        assert (positions[1:] == 0).logical_or(positions[1:] == positions[:-1] + 1).all()


@pytest.fixture
def preference_pack(tmp_path: Path, tokenizer: Tokenizer, write_jsonl: Callable) -> Path:
    pairs = [
        {"prompt": "Where does the cat sleep?", "chosen": "On the windowsill.", "rejected": "在河里。"},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
            "chosen": [{"role": "assistant", "content": "Hi."}],
            "rejected": [{"role": "assistant", "content": "Hello there, how are you today?"}],
        },
    ]
    corpus = Corpus(write_jsonl(tmp_path / "dpo.jsonl", pairs))
    pack_corpus(corpus, tokenizer, tmp_path / "dpo.arrow", seq_len=48, workers=1)
    return tmp_path / "dpo.arrow"


def test_preference_examples_score_responses_only(preference_pack: Path, tokenizer: Tokenizer) -> None:
    dataset = PreferenceDataset(preference_pack)

    example = dataset[0]

    assert set(example) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    for side, reply in (("chosen", "On the windowsill."), ("rejected", "在河里。")):
        input_ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
        assert input_ids.shape == labels.shape == (48,)
        scored = labels[labels != IGNORE_INDEX].tolist()
        assert scored == [*tokenizer.encode(reply), tokenizer.im_end_id]
    prompt_length = int((example["chosen_labels"] != IGNORE_INDEX).nonzero()[0])
    assert torch.equal(example["chosen_input_ids"][:prompt_length], example["rejected_input_ids"][:prompt_length])
    assert len(dataset) == 2


@pytest.fixture
def prompt_pack(tmp_path: Path, tokenizer: Tokenizer, write_jsonl: Callable) -> Path:
    prompts = [{"prompt": "What is two and two?", "answer": "4"}, {"prompt": "你好", "answer": None}]
    corpus = Corpus(write_jsonl(tmp_path / "prompts.jsonl", prompts))
    pack_corpus(corpus, tokenizer, tmp_path / "prompts.arrow", seq_len=32, workers=1)
    return tmp_path / "prompts.arrow"


def test_prompt_examples_and_left_padded_batch(prompt_pack: Path, tokenizer: Tokenizer) -> None:
    dataset = PromptDataset(prompt_pack)
    first = tokenizer.apply_chat_template([{"role": "user", "content": "What is two and two?"}], add_generation_prompt=True)
    second = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True)

    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=dataset.collate)))

    assert dataset[0]["prompt_ids"].tolist() == first
    assert dataset[0]["answer"] == "4"
    assert dataset[1]["answer"] is None
    assert batch["input_ids"].shape == (2, len(first))
    assert batch["input_ids"][1, -len(second) :].tolist() == second
    assert batch["input_ids"][1, : len(first) - len(second)].eq(tokenizer.pad_id).all()
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(first), len(second)]
    assert batch["answers"] == ["4", None]


def test_open_dataset_picks_class_by_kind(
    text_pack: Path, chat_pack: Path, preference_pack: Path, prompt_pack: Path
) -> None:
    assert type(open_dataset(text_pack)) is PackedDataset
    assert type(open_dataset(chat_pack)) is PackedDataset
    assert type(open_dataset(preference_pack)) is PreferenceDataset
    assert type(open_dataset(prompt_pack)) is PromptDataset
    with pytest.raises(PackedFileError, match=r"contains preference records.*open it with PreferenceDataset"):
        PackedDataset(preference_pack)
    with pytest.raises(PackedFileError, match=r"contains text records.*open it with PackedDataset"):
        PromptDataset(text_pack)


def test_old_format_names_the_fix(tmp_path: Path, text_pack: Path) -> None:
    packed = pa.ipc.open_file(pa.memory_map(str(text_pack))).read_all()
    metadata = json.loads(packed.schema.metadata[b"astrai_data"])
    metadata.update(format=1, astrai_data_version="0.1.0")
    old = write_arrow(
        tmp_path / "old.arrow",
        packed.select(["input_ids", "loss_mask"]).replace_schema_metadata(
            {b"astrai_data": json.dumps(metadata).encode()}
        ),
    )

    with pytest.raises(PackedFileError, match=r"old\.arrow has packed format 1 \(written by astrai-data 0\.1\.0\)") as raised:
        PackedDataset(old)

    assert "adds position_ids" in str(raised.value)
    assert "astrai-data pack" in str(raised.value)


def test_rows_stay_readable_after_pages_are_released(text_pack: Path) -> None:
    dataset = PackedDataset(text_pack)
    before = [dataset[index]["input_ids"] for index in range(len(dataset))]

    dataset.release_pages()
    reread = [dataset[index % len(dataset)]["input_ids"] for index in range(3 * mapped_file.RELEASE_EVERY_ROWS)]

    assert all(torch.equal(row, before[index % len(dataset)]) for index, row in enumerate(reread))
