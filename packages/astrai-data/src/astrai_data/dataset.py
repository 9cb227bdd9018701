"""PyTorch datasets over packed files: training windows, preference pairs and prompts.

Design choices:
- All three classes read the file through a memory map (:class:`~astrai_data.mapped_file.MappedPack`),
  so opening a file reads almost nothing and DataLoader workers share its pages.
- ``__getitem__`` copies one row into int64 tensors: torch wants writable memory, and int64 is what
  embeddings and ``cross_entropy`` take.
- ``labels`` is a sequence shifted by one, with ``-100`` (the default ``ignore_index`` of
  ``torch.nn.functional.cross_entropy``) wherever the target token has loss mask 0: padding, and in
  chat and preference files everything except assistant turns.
- A window example also carries ``position_ids`` (restarting at 0 for each document) and
  ``document_ids`` (0, 1, 2, ... along the window, padding included as a last segment).
  ``Transformer.forward(..., position_ids=..., document_ids=...)`` uses them so that no token
  attends to another document of the same window.
- Prompts have different lengths, so :meth:`PromptDataset.collate` pads a batch on the left, where
  generation expects the padding, and returns the attention mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .format import read_metadata
from .mapped_file import DATASET_FOR_KIND, MappedPack, open_reader

IGNORE_INDEX = -100


def _input_and_labels(ids: np.ndarray, loss_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a stored sequence into the model input and next-token labels (``-100`` where masked)."""
    labels = ids[1:].astype(np.int64)
    labels[loss_mask[1:] == 0] = IGNORE_INDEX
    return torch.from_numpy(ids[:-1].astype(np.int64)), torch.from_numpy(labels)


class PackedDataset(MappedPack):
    """Windows of a text or chat file as training examples for next-token prediction.

    Each example is a dict of int64 tensors of length ``seq_len``: ``input_ids``, ``labels``,
    ``position_ids`` and ``document_ids``.
    """

    KINDS = ("text", "chat")

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the stored window ``index`` as read-only ``(input_ids, loss_mask)`` views.

        Both arrays have ``seq_len + 1`` entries (int32 and uint8). Negative indices count from the end.

        Raises:
            IndexError: ``index`` is out of range.
        """
        row = self.row(index)
        return row["input_ids"], row["loss_mask"]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Return ``input_ids`` (the window without its last token), ``labels`` (without its first),
        and the ``position_ids`` and ``document_ids`` of the input tokens."""
        row = self.row(index)
        input_ids, labels = _input_and_labels(row["input_ids"], row["loss_mask"])
        position_ids = row["position_ids"][:-1].astype(np.int64)
        document_ids = np.cumsum(position_ids == 0) - 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": torch.from_numpy(position_ids),
            "document_ids": torch.from_numpy(document_ids),
        }


class PreferenceDataset(MappedPack):
    """Preference pairs as examples for DPO-style training.

    Each example has ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids`` and
    ``rejected_labels``, int64 tensors of length ``seq_len``. Labels are ``-100`` outside the
    response's assistant turns, so the sum of the token log-probabilities at the other positions is
    the log-likelihood of the response given the prompt.
    """

    KINDS = ("preference",)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.row(index)
        chosen_input_ids, chosen_labels = _input_and_labels(row["chosen_ids"], row["chosen_mask"])
        rejected_input_ids, rejected_labels = _input_and_labels(row["rejected_ids"], row["rejected_mask"])
        return {
            "chosen_input_ids": chosen_input_ids,
            "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_input_ids,
            "rejected_labels": rejected_labels,
        }


class PromptDataset(MappedPack):
    """Prompts for GRPO-style training, each ending with the open assistant header.

    Each example is ``{"prompt_ids": LongTensor[L], "answer": str | None}`` with ``L <= seq_len``.
    Pass :meth:`collate` as the DataLoader's ``collate_fn`` to batch prompts of different lengths.
    """

    KINDS = ("prompt",)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str | None]:
        row = self.row(index)
        return {"prompt_ids": torch.from_numpy(row["prompt_ids"].astype(np.int64)), "answer": row["answer"]}

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor | list[str | None]]:
        """Left-pad prompts with the file's ``pad_id`` into a batch.

        Returns:
            ``input_ids`` and ``attention_mask`` (1 on prompt tokens, 0 on padding), both int64 of
            shape ``(B, longest prompt)``, and ``answers``, the list of reference answers.
        """
        longest = max(len(example["prompt_ids"]) for example in examples)
        input_ids = torch.full((len(examples), longest), self.metadata["pad_id"], dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["prompt_ids"])
            input_ids[row, longest - length :] = example["prompt_ids"]
            attention_mask[row, longest - length :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "answers": [example["answer"] for example in examples],
        }


_CLASSES = {"PackedDataset": PackedDataset, "PreferenceDataset": PreferenceDataset, "PromptDataset": PromptDataset}


def open_dataset(path: str | os.PathLike) -> PackedDataset | PreferenceDataset | PromptDataset:
    """Open a packed file with the dataset class for its record kind.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        PackedFileError: ``path`` is not a packed file of this format.
    """
    path = Path(path)
    reader, _ = open_reader(path)
    kind = read_metadata(reader.schema, path)["kind"]
    return _CLASSES[DATASET_FOR_KIND[kind]](path)
