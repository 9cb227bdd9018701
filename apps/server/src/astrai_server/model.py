"""The model this server serves: where its checkpoint is, loading it once, and why it may be missing.

Design choices:
- The checkpoint is loaded once, in the app factory, never per request, into one
  ``astrai_infer.Scheduler`` per app. Request threads submit to it, and its background thread
  batches their sequences (continuous batching). ``atexit`` shuts it down with the process.
- Each setting is looked up in the Flask config first, then in the environment, then falls back to a
  default, so tests and embedding code can override what a shell exported.
- A missing or unloadable checkpoint does not stop the server. It starts without a model, and every
  route reports the reason and how to get a checkpoint: that is friendlier on a fresh clone than a
  traceback from ``flask run``.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrai_infer import Scheduler
from flask import Flask, current_app

logger = logging.getLogger(__name__)

# This file is apps/server/src/astrai_server/model.py, so the repository root is four folders up.
# NOTE: the default only finds the demo model from a source checkout or an editable install. An
# installed wheel lives in site-packages, so ASTRAI_CHECKPOINT has to be set there.
REPO_ROOT = Path(__file__).resolve().parents[4]
DEFAULT_CHECKPOINT = REPO_ROOT / "runs" / "demo" / "model"
DEFAULT_DEVICE = "cpu"
DEFAULT_MAX_BATCH_SIZE = 16

# The two ways to get a model, shown by the health check, the API and the chat page.
DEMO_COMMAND = "bash tools/demo.sh"
POINT_COMMAND = "ASTRAI_CHECKPOINT=/path/to/checkpoint flask --app apps/server run"

EXTENSION_KEY = "astrai"


@dataclass
class ServedModel:
    """The scheduler serving the loaded model, or the reason there is none.

    Attributes:
        scheduler: The ``astrai_infer.Scheduler`` (or a test double with the same methods), or None
            when no model could be loaded.
        checkpoint: The checkpoint directory the server was configured with.
        model_id: The name clients see in responses: the checkpoint directory's name.
        created: Unix time of the checkpoint's last change, reported by ``/v1/models``.
        problem: Why ``scheduler`` is None, for people reading the health check or the page.
    """

    scheduler: Any | None
    checkpoint: Path
    model_id: str
    created: int = 0
    problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.scheduler is not None

    @property
    def max_len(self) -> int | None:
        """Context length of the model in tokens (prompt plus reply), or None without a model."""
        return self.scheduler.max_len if self.scheduler is not None else None

    @property
    def hint(self) -> str:
        """The problem followed by both ways to fix it, as one line of plain text."""
        return (
            f"{self.problem}. Train the demo model with '{DEMO_COMMAND}' from the repository root, "
            f"or point the server at a checkpoint: '{POINT_COMMAND}'"
        )


def resolve_setting(app: Flask, name: str, default: str | os.PathLike) -> str:
    """Return ``name`` from the Flask config, else from the environment, else ``default``."""
    value = app.config.get(name) or os.environ.get(name)
    return str(value) if value else str(default)


def init_served_model(app: Flask) -> ServedModel:
    """Load the configured checkpoint (or take the injected ``SCHEDULER``) and attach it to ``app``.

    The result is stored in ``app.extensions`` and read back by ``get_served_model``. Loading errors
    are logged and recorded in ``ServedModel.problem``; they do not raise.
    """
    checkpoint = Path(resolve_setting(app, "ASTRAI_CHECKPOINT", DEFAULT_CHECKPOINT)).expanduser()
    served = ServedModel(scheduler=None, checkpoint=checkpoint, model_id=checkpoint.name)
    if checkpoint.exists():
        served.created = int(checkpoint.stat().st_mtime)

    injected = app.config.get("SCHEDULER")
    if injected is not None:
        served.scheduler = injected
        logger.info("serving the scheduler passed in the SCHEDULER config key as %r", served.model_id)
    elif not checkpoint.exists():
        served.problem = f"No model checkpoint at {checkpoint}"
        logger.warning("starting without a model: %s", served.hint)
    else:
        device = resolve_setting(app, "ASTRAI_DEVICE", DEFAULT_DEVICE)
        max_batch_size = _max_batch_size(resolve_setting(app, "ASTRAI_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE))
        served.scheduler, served.problem = _load_scheduler(checkpoint, device, max_batch_size)
        if served.scheduler is not None:
            atexit.register(served.scheduler.shutdown)

    app.extensions[EXTENSION_KEY] = served
    return served


def get_served_model() -> ServedModel:
    """Return the model attached to the current app by ``init_served_model``."""
    return current_app.extensions[EXTENSION_KEY]


def _max_batch_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"ASTRAI_MAX_BATCH_SIZE must be an integer >= 1, got {value!r}; 16 suits a CPU")
    return size


def _load_scheduler(checkpoint: Path, device: str, max_batch_size: int) -> tuple[Scheduler | None, str | None]:
    start = time.perf_counter()
    try:
        scheduler = Scheduler.from_checkpoint(checkpoint, device=device, max_batch_size=max_batch_size)
    except Exception as error:  # any failure leaves the server up, without a model
        logger.exception(
            "could not load the checkpoint %s on %s; starting without a model", checkpoint, device
        )
        return None, f"Could not load the checkpoint {checkpoint} ({type(error).__name__}: {error})"

    config = scheduler.model.config
    parameters = sum(p.numel() for p in scheduler.model.parameters())
    logger.info(
        "loaded checkpoint %s on %s in %.1f s | %.1fM parameters | vocab %d | context %d tokens",
        checkpoint,
        device,
        time.perf_counter() - start,
        parameters / 1e6,
        config.vocab_size,
        config.max_len,
    )
    return scheduler, None
