"""Model checkpoints as a directory of safe, portable files.

A checkpoint directory holds:
- ``config.json``: the ``ModelConfig``;
- ``model.safetensors``: the weights (the tied output projection is stored once, as the embedding);
- ``tokenizer.model``: the SentencePiece model, when one is given;
- any extra files a caller adds through ``extra_files`` (the trainer stores its state this way).

No pickle is used, so loading a checkpoint never runs code from it. Loading builds the model on
PyTorch's meta device and assigns tensors that safetensors memory-maps from the file (a private,
copy-on-write mapping), so the weights are never held twice: peak memory is about the size of the
weights, and a tensor that is cast to another dtype is cast one at a time. Saving writes everything into a
temporary sibling directory and renames it into place, so a crash mid-save leaves either the old
checkpoint or the new one, never a half-written mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .model import Transformer
from .tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.model"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model, its config, its tokenizer (if saved) and its directory."""

    model: Transformer
    config: ModelConfig
    tokenizer: Tokenizer | None
    path: Path
    metadata: dict = field(default_factory=dict)


def model_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Return the weights to store, without the output projection when it is tied to the embedding."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(
    path: str | os.PathLike,
    model: Transformer,
    tokenizer: Tokenizer | None = None,
    metadata: dict | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``metadata`` (JSON-serialisable strings) goes into the safetensors header.
    ``extra_files(tmp_dir)`` may write more files into the directory before it is moved into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.config.save(tmp / CONFIG_FILE)
        header = {key: str(value) for key, value in (metadata or {}).items()}
        save_file(model_state_dict(model), tmp / WEIGHTS_FILE, metadata=header)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        if extra_files is not None:
            extra_files(tmp)
        _fsync_directory(tmp)
        # mkdtemp creates the folder readable by its owner alone; give it the usual permissions.
        tmp.chmod(0o777 & ~_umask())
        _replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    for item in directory.iterdir():
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())


def _replace_directory(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is kept until the new one is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> Checkpoint:
    """Load a checkpoint directory written by ``save_checkpoint``.

    The weights are memory-mapped and loaded exactly as saved; pass ``dtype`` (for example
    ``torch.bfloat16``) to cast them, one tensor at a time.
    """
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        old = path.with_name(f".{path.name}.old")
        hint = f" (an earlier save was interrupted; the previous checkpoint is in {old})" if old.exists() else ""
        raise FileNotFoundError(
            f"{path} is not a checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it{hint}. "
            "Train one with 'astrai-train run CONFIG.json' or pass the directory a run wrote"
        )
    config = ModelConfig.load(path / CONFIG_FILE)
    try:
        with safe_open(path / WEIGHTS_FILE, framework="pt", device=str(device)) as weights:
            state = {name: _cast(weights.get_tensor(name), dtype) for name in weights.keys()}
    except SafetensorError as error:
        raise ValueError(
            f"{path / WEIGHTS_FILE} is not a readable safetensors file ({error}); the file is damaged or "
            "incomplete, so save or copy the checkpoint again"
        ) from None
    model = model_from_state_dict(config, state, source=f"{path / WEIGHTS_FILE} and {path / CONFIG_FILE}")
    with open(path / WEIGHTS_FILE, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        metadata = json.loads(handle.read(header_size)).get("__metadata__", {})
    tokenizer_path = path / TOKENIZER_FILE
    tokenizer = Tokenizer(tokenizer_path) if tokenizer_path.is_file() else None
    return Checkpoint(model=model.eval(), config=config, tokenizer=tokenizer, path=path, metadata=metadata)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def model_from_state_dict(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Transformer:
    """Build a ``Transformer`` around existing tensors without allocating weights of its own.

    The model is created on the meta device and ``state``'s tensors become its parameters as they
    are (same storage, device and dtype), so memory-mapped tensors stay memory-mapped.

    Args:
        config: The model's shape.
        state: Weights named as in ``model_state_dict``; ``lm_head.weight`` may be left out when
            the embeddings are tied.
        source: Where the weights come from, for error messages.

    Raises:
        ValueError: A weight is missing, unexpected or of the wrong shape.
    """
    with torch.device("meta"):
        model = Transformer(config)
    expected = dict(model.state_dict())
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        state = {name: tensor for name, tensor in state.items() if name != "lm_head.weight"}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong_shape = [
        f"{name} {tuple(state[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source} do not match: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}, "
            f"wrong shapes {wrong_shape[:5]}; the weights and the config come from different models"
        )
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    # RoPE tables are not stored; rebuild them where the weights are.
    model.init_rope(model.embed_tokens.weight.device)
    return model.eval()
