"""The training loop.

``Trainer.train()`` builds the context, then repeats: draw ``accumulation_steps`` micro-batches,
let the strategy compute each loss, back-propagate, clip, step the optimizer and the schedule, and
tell the callbacks. Evaluation on the validation set runs every ``eval_interval`` steps and at the
end. Everything run-specific (objective, logging, saving) lives in strategies and callbacks.
"""

from __future__ import annotations

from contextlib import nullcontext
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from astrai_core import save_checkpoint

from .callbacks import CheckpointCallback, MetricLoggerCallback, ProgressCallback, TrainCallback, prune_checkpoints
from .config import TrainConfig
from .context import TrainContext, TrainContextBuilder
from .evaluation import evaluate_by_language, language_groups
from .distributed import all_reduce_sum, any_rank, barrier, cpu_threads_per_process
from .fsdp import gather_model, gather_optimizer_state
from .interrupt import StopFlag, TrainingInterrupted
from .state import write_training_state

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
        self._language_groups: dict[str, list[int]] | None = None
        self.step_metrics: dict[str, float] = {}

    def _build_context(self) -> TrainContext:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        elif self._shares_cpu_with_other_ranks() and "OMP_NUM_THREADS" not in os.environ:
            processes = int(os.environ.get("LOCAL_WORLD_SIZE", self.builder.distributed.world_size))
            torch.set_num_threads(cpu_threads_per_process(processes))
            logger.info(
                "each of the %d training processes uses %d CPU threads (set num_threads to change this)",
                processes,
                torch.get_num_threads(),
            )
        return self.builder.build()

    def _shares_cpu_with_other_ranks(self) -> bool:
        return self.builder.distributed.enabled and self.builder.device.type == "cpu"

    def _autocast(self):
        if self.config.dtype == "bfloat16":
            return torch.autocast(device_type=self.context.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train(self) -> TrainContext:
        """Run until ``max_steps``; on SIGINT or SIGTERM save a checkpoint and raise ``TrainingInterrupted``."""
        self.context = self._build_context()
        context, config = self.context, self.config
        self._call("on_train_begin")
        if context.step >= config.max_steps:
            logger.info("nothing to do: the run already reached max_steps=%d", config.max_steps)
        elif context.step == 0:
            self.evaluate()  # the untrained baseline, so every curve starts from a known point
        batches = iter(context.dataloader)
        window_tokens, window_start = 0, time.perf_counter()

        with StopFlag().installed() as stop:
            while context.step < config.max_steps:
                loss, tokens = self._train_step(batches)
                window_tokens += tokens
                context.step += 1
                logged = context.step % config.log_interval == 0 or context.step == config.max_steps
                metrics = {"step": context.step, "loss": loss, "lr": context.scheduler.get_last_lr()[0]}
                metrics.update(self.step_metrics)  # the strategy's own numbers, from this rank
                if logged:
                    elapsed = time.perf_counter() - window_start
                    metrics.update(tokens_per_second=window_tokens / max(elapsed, 1e-9), logged=True)
                    window_tokens, window_start = 0, time.perf_counter()
                self._call("on_step_end", metrics)
                if any_rank(stop.signal_name is not None, context.distributed, context.device):
                    path = self.save_checkpoint()
                    barrier(context.distributed, context.device)
                    raise TrainingInterrupted(stop.signal_name or "SIGTERM", context.step, str(path))
                if config.eval_interval and context.step % config.eval_interval == 0 and context.step < config.max_steps:
                    self.evaluate()

        self.evaluate()
        self._call("on_train_end")
        # Wait while rank 0 writes the last checkpoints. With gloo (torch 2.13, CPU), a rank that
        # destroyed its process group while its peer was still busy aborted with SIGABRT in 4 of 30
        # tries of a 2-process DDP script, and in none of 30 with a barrier first.
        barrier(context.distributed, context.device)
        return context

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Save a resumable checkpoint (default ``out_dir/step-N``) and prune old ones.

        In a multi-process run only rank 0 writes; the other ranks return the same path. When the
        model is sharded (``data_parallel="fsdp"``) every rank must call it, because the full
        weights and optimizer state are gathered from all ranks.
        """
        context = self.context
        out_dir = Path(self.config.out_dir)
        path = Path(path) if path is not None else out_dir / f"step-{context.step}"
        if context.fully_sharded:
            model = gather_model(context.model)
            optimizer_state = gather_optimizer_state(context.model, context.optimizer)
        if not context.distributed.is_main:
            return path
        if not context.fully_sharded:
            model, optimizer_state = context.model, context.optimizer.state_dict()
        progress = {
            "step": context.step,
            "consumed_samples": context.sampler.consumed,
            "config": self.config.to_dict(),
        }
        save_checkpoint(
            path,
            model,
            context.tokenizer,
            metadata={"step": context.step},
            extra_files=lambda tmp: write_training_state(tmp, optimizer_state, context.scheduler, progress),
        )
        prune_checkpoints(out_dir, self.config.keep_checkpoints)
        logger.info("saved checkpoint %s", path)
        return path

    def save_model(self, path: str | Path) -> Path:
        """Save the model and tokenizer alone, without training state, for inference or ``init_from``.

        Like ``save_checkpoint``: only rank 0 writes, and under FSDP every rank must call it.
        """
        context = self.context
        model = gather_model(context.model) if context.fully_sharded else context.model
        if context.distributed.is_main:
            save_checkpoint(path, model, context.tokenizer, metadata={"step": context.step})
        return Path(path)

    def _train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> tuple[float, int]:
        """Run one optimizer step; return the step's loss and the input tokens processed by all ranks.

        Each micro-batch's mean loss is weighted by its share of the step's loss units (target
        tokens, by default) across all micro-batches and ranks. So the gradient equals that of one
        big batch, whatever accumulation_steps and process count make up the same global batch.
        """
        context, config = self.context, self.config
        strategy, distributed = context.strategy, context.distributed
        context.model.train()
        micro_batches = [next(batches) for _ in range(config.accumulation_steps)]
        weights = [strategy.loss_weight(batch) for batch in micro_batches]
        total_weight = all_reduce_sum(float(sum(weights)), distributed, context.device)
        loss_sum, total_tokens = 0.0, 0
        self.step_metrics = {}
        for index, (batch, weight) in enumerate(zip(micro_batches, weights)):
            last = index == len(micro_batches) - 1
            # DDP averages gradients across ranks in every backward pass; skip that until the last
            # micro-batch of the step, when the gradients are complete. FSDP reduce-scatters after
            # every micro-batch (see fsdp.py).
            sync = nullcontext() if last or context.parallel_model is None else context.parallel_model.no_sync()
            with sync:
                with self._autocast():
                    output = strategy.compute_loss(batch)
                # DDP and FSDP divide the summed gradients by world_size, which the factor undoes.
                scale = weight * distributed.world_size / total_weight if total_weight else 0.0
                (output.loss * scale).backward()
            loss_sum += output.loss.item() * weight
            for name, value in output.metrics.items():
                self.step_metrics[name] = self.step_metrics.get(name, 0.0) + value / len(micro_batches)
            total_tokens += sum(value.numel() for key, value in batch.items() if key.endswith("input_ids"))
        loss = all_reduce_sum(loss_sum, distributed, context.device) / total_weight if total_weight else 0.0
        total_tokens *= distributed.world_size
        # With clipping off, an infinite max_norm still returns the norm without changing gradients.
        # Under FSDP the gradients are DTensor shards, and clip_grad_norm_ reduces their norm over all
        # ranks, so it clips by the global norm.
        max_norm = config.max_grad_norm or math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(context.model.parameters(), max_norm))
        if math.isfinite(loss) and math.isfinite(grad_norm):
            context.optimizer.step()
        else:
            self._handle_nonfinite(loss, grad_norm)
        context.scheduler.step()
        context.optimizer.zero_grad(set_to_none=True)
        return loss, total_tokens

    def _handle_nonfinite(self, loss: float, grad_norm: float) -> None:
        step = self.context.step + 1
        what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {grad_norm}"
        if self.config.on_nonfinite == "skip":
            logger.warning("step %d: %s; skipped this update (on_nonfinite=skip)", step, what)
            return
        raise FloatingPointError(
            f"step {step}: {what}. Lower optimizer.lr, set max_grad_norm, or set on_nonfinite to "
            "'skip'; then run again to resume from the last checkpoint"
        )

    def evaluate(self) -> dict[str, float] | None:
        """Compute held-out loss overall and per language, if a validation set is configured.

        Rank 0 evaluates and reports. Under FSDP every rank must call it and runs the same windows,
        because each forward pass all-gathers the weights from all ranks.
        """
        context = self.context
        if context.val_dataset is None:
            return None
        if not context.distributed.is_main and not context.fully_sharded:
            return None
        if self._language_groups is None:
            max_windows = self.config.eval_batches * self.config.batch_size
            self._language_groups = language_groups(context.val_dataset, context.tokenizer, max_windows)
        metrics = {"step": context.step}
        metrics.update(
            evaluate_by_language(
                context.strategy, context.val_dataset, self._language_groups, self.config.batch_size, self._autocast
            )
        )
        self._call("on_evaluate", metrics)
        return metrics

    def _call(self, hook: str, *args) -> None:
        is_main = self.context.distributed.is_main
        for callback in self.callbacks:
            if is_main or not callback.main_process_only:
                getattr(callback, hook)(self, *args)

