"""Held-out loss, overall and for each language.

A bilingual model can improve on one language while it gets worse on the other, and one overall
number hides that. So the validation windows are grouped by language once per run (each window is
decoded and classified with ``astrai_core.detect_language``), and the loss is reported per group as
well as overall, weighted by the number of target tokens.

Evaluation uses at most ``max_windows`` windows, spread evenly over the file rather than taken from
its start, because packed files keep the corpus order and often hold one language after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from astrai_core import Tokenizer, detect_language
from torch.utils.data import DataLoader, Dataset, Subset

from .strategy import IGNORE_INDEX, BaseStrategy


def language_groups(dataset: Dataset, tokenizer: Tokenizer, max_windows: int) -> dict[str, list[int]]:
    """Map each language to the indices of its windows among ``max_windows`` evenly spaced ones."""
    total = len(dataset)
    count = min(total, max_windows)
    indices = sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(count)}) if total else []
    groups: dict[str, list[int]] = {}
    for index in indices:
        sample = dataset[index]
        labels = sample["labels"] if "labels" in sample else sample["chosen_labels"]
        targets = labels[labels != IGNORE_INDEX]
        groups.setdefault(detect_language(tokenizer.decode(targets.tolist())), []).append(index)
    return dict(sorted(groups.items()))


@torch.no_grad()
def evaluate_loss(
    strategy: BaseStrategy,
    dataset: Dataset,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> tuple[float, int]:
    """Token-weighted mean loss of ``strategy`` over every window of ``dataset``."""
    model = strategy.model
    was_training = model.training
    model.eval()
    loss_sum, token_count = 0.0, 0
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            if autocast is not None:
                with autocast():
                    output = strategy.compute_loss(batch)
            else:
                output = strategy.compute_loss(batch)
            loss_sum += output.loss.item() * output.num_tokens
            token_count += output.num_tokens
    finally:
        model.train(was_training)
    return loss_sum / max(token_count, 1), token_count


def evaluate_by_language(
    strategy: BaseStrategy,
    dataset: Dataset,
    groups: dict[str, list[int]],
    batch_size: int,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Return ``val_loss``/``val_tokens`` overall and ``val_loss_<lang>``/``val_tokens_<lang>`` per group."""
    metrics: dict[str, float] = {}
    loss_sum, token_count = 0.0, 0
    for language, indices in groups.items():
        loss, tokens = evaluate_loss(strategy, Subset(dataset, indices), batch_size, autocast)
        metrics[f"val_loss_{language}"] = loss
        metrics[f"val_tokens_{language}"] = tokens
        loss_sum += loss * tokens
        token_count += tokens
    metrics["val_loss"] = loss_sum / max(token_count, 1)
    metrics["val_tokens"] = token_count
    return metrics
