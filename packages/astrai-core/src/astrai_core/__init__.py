"""AstrAI core: the model config, the Transformer, the tokenizer and checkpoints."""

from .__about__ import __version__
from .checkpoint import Checkpoint, load_checkpoint, model_from_state_dict, model_state_dict, save_checkpoint
from .config import PRESETS, ModelConfig
from .hf import export_hf_checkpoint, import_hf_checkpoint
from .model import KVCache, Transformer
from .tokenizer import CHAT_ROLES, IM_END, IM_START, Tokenizer, detect_language

__all__ = [
    "CHAT_ROLES",
    "IM_END",
    "IM_START",
    "PRESETS",
    "Checkpoint",
    "KVCache",
    "ModelConfig",
    "Tokenizer",
    "Transformer",
    "__version__",
    "detect_language",
    "export_hf_checkpoint",
    "import_hf_checkpoint",
    "load_checkpoint",
    "model_state_dict",
    "model_from_state_dict",
    "save_checkpoint",
]
