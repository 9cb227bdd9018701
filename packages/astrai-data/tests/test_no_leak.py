"""Packed documents do not leak into each other: the model's logits for one document of a window
do not change when another document of the same window does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from astrai_core import ModelConfig, Transformer, Tokenizer
from astrai_data import Corpus, PackedDataset, pack_corpus


def window_logits(
    tmp_path: Path, name: str, documents: list[str], tokenizer: Tokenizer, write_text_corpus: Callable
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pack ``documents`` into one window and return the model's logits over it and the example."""
    corpus = Corpus(write_text_corpus(tmp_path / name, documents))
    pack_corpus(corpus, tokenizer, tmp_path / f"{name}.arrow", seq_len=96, workers=1)
    dataset = PackedDataset(tmp_path / f"{name}.arrow")
    assert len(dataset) == 1
    example = dataset[0]
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, dim_ffn=64, max_len=96)
    model = Transformer(config).eval()
    with torch.no_grad():
        logits = model(
            example["input_ids"][None],
            position_ids=example["position_ids"][None],
            document_ids=example["document_ids"][None],
        )["logits"][0]
    return logits, example


def segment(values: torch.Tensor, example: dict[str, torch.Tensor], document: int) -> torch.Tensor:
    return values[example["document_ids"] == document]


def test_changing_one_document_leaves_the_other_unchanged(
    tmp_path: Path, tokenizer: Tokenizer, write_text_corpus: Callable
) -> None:
    kept = "雨落在花园里，西红柿长得很快。"
    original, example = window_logits(tmp_path, "a", ["The cat sleeps.", kept], tokenizer, write_text_corpus)
    changed, changed_example = window_logits(
        tmp_path, "b", ["Every morning the baker opens the shop.", kept], tokenizer, write_text_corpus
    )

    # Document 1 is the kept one in both windows, at different offsets.
    assert segment(example["input_ids"], example, 1).tolist() == segment(
        changed_example["input_ids"], changed_example, 1
    ).tolist()
    assert example["document_ids"].max() == 2  # two documents and the padding
    torch.testing.assert_close(segment(original, example, 1), segment(changed, changed_example, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(segment(original, example, 0)[:3], segment(changed, changed_example, 0)[:3])
