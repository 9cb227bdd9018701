"""End to end on a slice of the real bilingual corpus: train a tokenizer, pack text and chat, read back.

Skipped when the corpus folder, a sibling of the repository, is absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from astrai_core import Tokenizer
from astrai_data import IGNORE_INDEX, PackedDataset
from astrai_data.cli import main
from click.testing import CliRunner

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus"
FILES_PER_LANGUAGE = 20
MAX_FILE_BYTES = 20_000  # keeps the slice small enough for a fast test
SFT_LINES = 30

pytestmark = pytest.mark.skipif(not (CORPUS / "pretrain").is_dir(), reason=f"corpus not found at {CORPUS}")


@pytest.fixture(scope="module")
def corpus_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copy 20 small documents per language, spread over the sources, and 30 conversations."""
    target = tmp_path_factory.mktemp("corpus-slice")
    for language in ("en", "zh"):
        small = sorted(
            p for p in (CORPUS / "pretrain" / language).glob("*.txt") if p.stat().st_size < MAX_FILE_BYTES
        )
        chosen = small[:: len(small) // FILES_PER_LANGUAGE][:FILES_PER_LANGUAGE]
        (target / "pretrain" / language).mkdir(parents=True)
        for path in chosen:
            shutil.copy(path, target / "pretrain" / language / path.name)
    with (CORPUS / "sft.jsonl").open("rb") as source:
        lines = [source.readline() for _ in range(SFT_LINES)]
    (target / "sft.jsonl").write_bytes(b"".join(lines))
    return target


def test_real_corpus_slice_end_to_end(corpus_slice: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    tokenizer_path = tmp_path / "tok.model"

    trained = runner.invoke(
        main, ["tokenizer", "train", str(corpus_slice), "-o", str(tokenizer_path), "--vocab-size", "1500"]
    )
    text = runner.invoke(
        main,
        [
            "pack",
            str(corpus_slice / "pretrain"),
            str(tmp_path / "text.arrow"),
            "--tokenizer",
            str(tokenizer_path),
            "--seq-len",
            "256",
            "--workers",
            "2",
        ],
    )
    chat = runner.invoke(
        main,
        [
            "pack",
            str(corpus_slice / "sft.jsonl"),
            str(tmp_path / "chat.arrow"),
            "--tokenizer",
            str(tokenizer_path),
            "--seq-len",
            "256",
            "--workers",
            "2",
        ],
    )

    assert trained.exit_code == 0, trained.output
    assert text.exit_code == 0, text.output
    assert chat.exit_code == 0, chat.output
    languages = [line.split()[0] for line in trained.stdout.splitlines()[2:]]
    assert languages == ["zh", "en"]

    tokenizer = Tokenizer(tokenizer_path)
    text_windows = PackedDataset(tmp_path / "text.arrow")
    text_windows.check_tokenizer(tokenizer)
    stream = []
    for index in range(len(text_windows)):
        ids, loss_mask = text_windows.window(index)
        stream += ids[loss_mask == 1].tolist()
    documents = [tokenizer.decode(piece) for piece in split_before(stream, tokenizer.bos_id)]
    originals = sorted((corpus_slice / "pretrain").rglob("*.txt"))
    assert len(documents) == 2 * FILES_PER_LANGUAGE
    assert documents == [path.read_bytes().decode("utf-8") for path in originals]

    chat_windows = PackedDataset(tmp_path / "chat.arrow")
    counts = chat_windows.metadata["counts"]
    assert counts["documents"] + counts["dropped"] == SFT_LINES
    assert counts["truncated"] > 0  # some FAQ answers are longer than 257 tokens
    for index in range(len(chat_windows)):
        assert (chat_windows[index]["labels"] != IGNORE_INDEX).any()
    first = json.loads((corpus_slice / "sft.jsonl").read_text(encoding="utf-8").splitlines()[0])
    first_ids, _ = tokenizer.encode_chat(first["messages"])
    assert chat_windows.window(0)[0][: len(first_ids)].tolist() == first_ids[:257]


def split_before(stream: list[int], boundary: int) -> list[list[int]]:
    pieces: list[list[int]] = []
    for token in stream:
        if token == boundary or not pieces:
            pieces.append([])
        pieces[-1].append(token)
    return pieces
