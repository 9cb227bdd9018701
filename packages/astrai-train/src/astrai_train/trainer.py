"""The training loop.

``Trainer.train()`` builds the context, then repeats: draw ``accumulation_steps`` micro-batches,
let the strategy compute each loss, back-propagate, clip, step the optimizer and the schedule, and
tell the callbacks. Evaluation on the validation set runs every ``eval_interval`` steps and at the
end. Everything run-specific (objective, logging, saving) lives in strategies and callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from .callbacks import CheckpointCallback, MetricLoggerCallback, ProgressCallback, TrainCallback
from .config import TrainConfig
from .context import TrainContext, TrainContextBuilder

logger = logging.getLogger(__name__)


def default_callbacks() -> list[TrainCallback]:
    return [ProgressCallback(), MetricLoggerCallback(), CheckpointCallback()]


class Trainer:
    """Runs one training job described by a ``TrainConfig``."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainCallback] | None = None,
        builder: TrainContextBuilder | None = None,
    ):
        self.config = config
        self.callbacks = list(callbacks) if callbacks is not None else default_callbacks()
        self.builder = builder or TrainContextBuilder(config)
        self.context: TrainContext | None = None

    def _build_context(self) -> TrainContext:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        return self.builder.build()

    def _autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=self.context.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train(self) -> TrainContext:
        self.context = self._build_context()
        context, config = self.context, self.config
        self._call("on_train_begin")
        if context.step >= config.max_steps:
            logger.info("nothing to do: the run already reached max_steps=%d", config.max_steps)
        elif context.step == 0:
            self.evaluate()  # the untrained baseline, so every curve starts from a known point
        batches = iter(context.dataloader)
        window_tokens, window_start = 0, time.perf_counter()

        while context.step < config.max_steps:
            loss, tokens = self._train_step(batches)
            window_tokens += tokens
            context.step += 1
            logged = context.step % config.log_interval == 0 or context.step == config.max_steps
            metrics = {"step": context.step, "loss": loss, "lr": context.scheduler.get_last_lr()[0]}
            if logged:
                elapsed = time.perf_counter() - window_start
                metrics.update(tokens_per_second=window_tokens / max(elapsed, 1e-9), logged=True)
                window_tokens, window_start = 0, time.perf_counter()
            self._call("on_step_end", metrics)
            if config.eval_interval and context.step % config.eval_interval == 0 and context.step < config.max_steps:
                self.evaluate()

        self.evaluate()
        self._call("on_train_end")
        return context

    def _train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """Run one optimizer step; return the mean micro-batch loss and the input tokens processed."""
        context, config = self.context, self.config
        context.model.train()
        total_loss, total_tokens = 0.0, 0
        for _ in range(config.accumulation_steps):
            batch = next(batches)
            with self._autocast():
                output = context.strategy.compute_loss(batch)
            (output.loss / config.accumulation_steps).backward()
            total_loss += output.loss.item()
            total_tokens += batch["input_ids"].numel()
        loss = total_loss / config.accumulation_steps
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss} at step {context.step + 1}; lower optimizer.lr or enable "
                "max_grad_norm, then resume from the last checkpoint"
            )
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(context.model.parameters(), config.max_grad_norm)
        context.optimizer.step()
        context.scheduler.step()
        context.optimizer.zero_grad(set_to_none=True)
        return loss, total_tokens

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Compute the token-weighted mean loss on the validation set, if one is configured."""
        context = self.context
        if context.val_dataset is None:
            return None
        loss, tokens = evaluate_loss(context, self._autocast, self.config.eval_batches)
        metrics = {"step": context.step, "val_loss": loss, "val_tokens": tokens}
        self._call("on_evaluate", metrics)
        return metrics

    def _call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def evaluate_loss(context: TrainContext, autocast, max_batches: int) -> tuple[float, int]:
    """Mean next-token loss over the first ``max_batches`` validation batches, weighted by tokens."""
    model = context.model
    was_training = model.training
    model.eval()
    loader = DataLoader(context.val_dataset, batch_size=context.config.batch_size, shuffle=False)
    loss_sum, token_count = 0.0, 0
    for index, batch in enumerate(loader):
        if index >= max_batches:
            break
        with autocast():
            output = context.strategy.compute_loss(batch)
        loss_sum += output.loss.item() * output.num_tokens
        token_count += output.num_tokens
    model.train(was_training)
    return loss_sum / max(token_count, 1), token_count
