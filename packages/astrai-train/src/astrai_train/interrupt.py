"""Turning SIGINT (Ctrl-C) and SIGTERM into a clean stop after the current optimizer step.

The handlers only record the signal; the trainer checks the flag between steps, saves a checkpoint
and raises ``TrainingInterrupted``. A second Ctrl-C while that happens interrupts at once, as usual.
Handlers are installed only in the main thread (Python delivers signals there only) and the previous
handlers are restored when training ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signal_name: str, step: int, checkpoint: str):
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint saved to {checkpoint}")
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 plus the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(getattr(signal, self.signal_name))


class StopFlag:
    """The first stop signal received while training, if any."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum, frame):
            if self.signal_name is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
            self.signal_name = signal.Signals(signum).name

        for sig in previous:
            signal.signal(sig, handle)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
