"""AstrAI inference: KV-cached text generation with sampling, batching, UTF-8-safe streaming and a
continuous-batching scheduler for serving many requests at once."""

from .__about__ import __version__
from .config import GenerationConfig
from .generator import Completion, Generator, Prompt, StreamChunk
from .sampling import apply_top_k, apply_top_p, sample_next_token
from .scheduler import RequestHandle, Scheduler, SchedulerStats

__all__ = [
    "Completion",
    "GenerationConfig",
    "Generator",
    "Prompt",
    "RequestHandle",
    "Scheduler",
    "SchedulerStats",
    "StreamChunk",
    "__version__",
    "apply_top_k",
    "apply_top_p",
    "sample_next_token",
]
