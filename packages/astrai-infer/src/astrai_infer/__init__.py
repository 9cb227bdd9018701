"""AstrAI inference: KV-cached text generation with sampling, batching and UTF-8-safe streaming."""

from .__about__ import __version__
from .config import GenerationConfig
from .generator import Completion, Generator, Prompt, StreamChunk
from .sampling import apply_top_k, apply_top_p, sample_next_token

__all__ = [
    "Completion",
    "GenerationConfig",
    "Generator",
    "Prompt",
    "StreamChunk",
    "__version__",
    "apply_top_k",
    "apply_top_p",
    "sample_next_token",
]
