"""Callbacks: checkpointing, metric logs and progress lines, plugged into the trainer's loop.

The trainer calls each hook on every callback in order. A callback reads what it needs from the
trainer (``trainer.context``, ``trainer.config``) and never changes the training maths, so a run's
losses do not depend on which callbacks are attached.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import STEP_DIR
from .plot import write_loss_plot

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)


class TrainCallback:
    """Base class; override the hooks you need.

    In a multi-process run the trainer calls a callback on rank 0 only, unless its
    ``main_process_only`` is False.
    """

    main_process_only = True

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class CheckpointCallback(TrainCallback):
    """Saves ``step-N/`` every ``ckpt_interval`` steps (keeping the newest few) and ``final/`` at the end.

    It runs on every rank, because saving a sharded (FSDP) model gathers it from all ranks. The
    trainer's save methods write on rank 0 only.
    """

    main_process_only = False

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        interval = trainer.config.ckpt_interval
        step = trainer.context.step
        if interval and step % interval == 0 and step < trainer.config.max_steps:
            trainer.save_checkpoint()

    def on_train_end(self, trainer: Trainer) -> None:
        trainer.save_checkpoint()
        path = trainer.save_model(Path(trainer.config.out_dir) / "final")
        if trainer.context.distributed.is_main:
            logger.info("saved the final model to %s", path)


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` (at least one) ``step-N`` checkpoints in ``out_dir``."""
    steps = sorted(
        (int(match.group(1)), path) for path in out_dir.glob("step-*") if (match := STEP_DIR.match(path.name))
    )
    for _, path in steps[: max(len(steps) - max(keep, 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


class MetricLoggerCallback(TrainCallback):
    """Appends one JSON object per logged step and per evaluation to ``out_dir/metrics.jsonl``.

    After each evaluation it redraws ``out_dir/metrics.svg`` with the loss curves.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        self.path = Path(trainer.config.out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if metrics.get("logged"):
            self._write({k: v for k, v in metrics.items() if k != "logged"})

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write(metrics)
        write_loss_plot(self.path, self.path.with_name("metrics.svg"))

    def on_train_end(self, trainer: Trainer) -> None:
        write_loss_plot(self.path, self.path.with_name("metrics.svg"))

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# Step metrics every run has; the others come from the strategy (DPO rewards, GRPO rollouts).
STANDARD_METRICS = frozenset({"step", "loss", "lr", "tokens_per_second", "logged"})


class ProgressCallback(TrainCallback):
    """Logs one line per logged step: ``step 120/4000 | loss 2.341 | lr 3.0e-04 | 41.2k tok/s | eta 3m``."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.start_time = time.perf_counter()
        self.start_step = trainer.context.step

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not metrics.get("logged"):
            return
        step, max_steps = metrics["step"], trainer.config.max_steps
        elapsed = time.perf_counter() - self.start_time
        done = max(step - self.start_step, 1)
        eta = elapsed / done * (max_steps - step)
        logger.info(
            "step %d/%d | loss %.3f | lr %.1e | %s tok/s | eta %s%s",
            step,
            max_steps,
            metrics["loss"],
            metrics["lr"],
            _compact(metrics["tokens_per_second"]),
            _duration(eta),
            "".join(f" | {name} {value:.3g}" for name, value in metrics.items() if name not in STANDARD_METRICS),
        )

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        languages = sorted(key.removeprefix("val_loss_") for key in metrics if key.startswith("val_loss_"))
        per_language = ", ".join(f"{language} {metrics[f'val_loss_{language}']:.3f}" for language in languages)
        logger.info(
            "step %d | held-out loss %.3f (%s; %d %s)",
            metrics["step"],
            metrics["val_loss"],
            per_language,
            metrics["val_tokens"],  # counted in the strategy's loss units despite the key name
            trainer.context.strategy.loss_unit,
        )


def _compact(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
