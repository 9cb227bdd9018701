"""Import and export Hugging Face checkpoint folders of the Llama and Qwen3 families.

A Hugging Face folder holds ``config.json`` and either ``model.safetensors`` or shards listed in
``model.safetensors.index.json``; a SentencePiece ``tokenizer.model`` may sit beside them.

Design choices:
- The two architectures compute the same function as ``Transformer``: rotate-half RoPE, pre-norm
  RMSNorm, grouped-query attention, SwiGLU. Only names differ, so conversion renames tensors and
  never permutes or rescales them; a round trip is bit-exact.
- A model with ``use_qk_norm`` is exported as ``qwen3``, any other as ``llama``. A model with
  ``use_gated_attention`` has no Hugging Face equivalent and is refused rather than exported as
  something that computes a different function.
- Import refuses every ``config.json`` field that would change the computation in a way
  ``Transformer`` cannot reproduce (biases, another activation, sliding windows, other RoPE types)
  and names those fields. Fields that do not change the function (token ids, dtype, initialiser
  range, ...) are ignored.
- ``head_dim`` maps to ``ModelConfig.dim_head``. A value equal to ``hidden_size //
  num_attention_heads`` imports as ``None``, so an AstrAI model without an explicit head size
  survives a round trip unchanged. Export always writes ``head_dim``.
- Import memory-maps the safetensors files and builds the model around the mapped tensors, as
  ``load_checkpoint`` does. Export writes into a temporary folder renamed into place.
- Both the pre-5.0 spelling (``rope_theta`` plus ``rope_scaling``) and the newer ``rope_parameters``
  are read; export writes the older one, which every current reader still accepts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint import (
    TOKENIZER_FILE,
    Checkpoint,
    _fsync_directory,
    _replace_directory,
    model_from_state_dict,
    model_state_dict,
)
from .config import ModelConfig
from .model import Transformer
from .tokenizer import Tokenizer

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DEFAULT_SHARD_SIZE = 5 * 1024**3

# config.json fields that do not change what the network computes.
IGNORED_FIELDS = frozenset(
    {
        "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "bos_token_id",
        "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "attention_dropout",
        "pretraining_tp", "_name_or_path", "return_dict", "output_hidden_states", "output_attentions",
        "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
        "tokenizer_class", "max_window_layers", "sliding_window",
    }
)  # fmt: skip
# Head size that transformers gives a qwen3 config.json without head_dim (Qwen3Config's default,
# checked in transformers 5.25). Llama's default is hidden_size // num_attention_heads.
QWEN3_DEFAULT_HEAD_DIM = 128

# config.json fields that must have exactly this value (or be absent).
REQUIRED_VALUES = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "use_sliding_window": False,
    "partial_rotary_factor": 1.0,
}

# AstrAI name pattern -> Hugging Face name pattern; {} is the layer number.
_LAYER_NAMES = {
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.o_proj": "self_attn.o_proj",
    "attention.q_norm": "self_attn.q_norm",
    "attention.k_norm": "self_attn.k_norm",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "feed_forward.gate_proj": "mlp.gate_proj",
    "feed_forward.up_proj": "mlp.up_proj",
    "feed_forward.down_proj": "mlp.down_proj",
}
_TOP_NAMES = {"embed_tokens": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
_TO_HF = {**_TOP_NAMES, **{f"layers.{{}}.{ours}": f"model.layers.{{}}.{theirs}" for ours, theirs in _LAYER_NAMES.items()}}
_FROM_HF = {theirs: ours for ours, theirs in _TO_HF.items()}
_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def _rename(name: str, table: dict[str, str]) -> str | None:
    """Map ``name`` through ``table`` (patterns with ``{}`` for the layer), or ``None`` if unknown."""
    match = _LAYER_NUMBER.search(name)
    pattern = name[: match.start()] + ".{}." + name[match.end() :] if match else name
    module, _, kind = pattern.rpartition(".")
    if module not in table:
        return None
    renamed = f"{table[module]}.{kind}"
    return renamed.format(match.group(1)) if match else renamed


def to_hf_name(name: str) -> str:
    """Return the Hugging Face name of an AstrAI weight, such as ``model.layers.0.mlp.up_proj.weight``."""
    renamed = _rename(name, _TO_HF)
    if renamed is None:
        raise ValueError(f"weight {name!r} has no Hugging Face counterpart")
    return renamed


def from_hf_name(name: str) -> str | None:
    """Return the AstrAI name of a Hugging Face weight, or ``None`` if ``Transformer`` has none."""
    return _rename(name, _FROM_HF)


# Configs


def config_from_hf(hf: dict[str, Any], source: str = HF_CONFIG_FILE) -> ModelConfig:
    """Translate a Llama or Qwen3 ``config.json`` mapping into a ``ModelConfig``.

    Raises:
        ValueError: The model type is not supported, or fields name features ``Transformer`` lacks.
    """
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; AstrAI imports {sorted(ARCHITECTURES)}"
        )
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_theta = rope.pop("rope_theta", None) or hf.get("rope_theta", 10000.0)
    if "partial_rotary_factor" in rope:
        hf = {**hf, "partial_rotary_factor": rope.pop("partial_rotary_factor")}
    head_dim = hf.get("head_dim")
    if head_dim is None and model_type == "qwen3":
        head_dim = QWEN3_DEFAULT_HEAD_DIM
    hidden_size, n_heads = hf.get("hidden_size"), hf.get("num_attention_heads")
    if _is_default_head_dim(head_dim, hidden_size, n_heads):
        head_dim = None
    fields = {
        "vocab_size": hf.get("vocab_size"),
        "dim": hf.get("hidden_size"),
        "n_layers": hf.get("num_hidden_layers"),
        "n_heads": hf.get("num_attention_heads"),
        "n_kv_heads": hf.get("num_key_value_heads") or hf.get("num_attention_heads"),
        "dim_ffn": hf.get("intermediate_size"),
        "max_len": hf.get("max_position_embeddings", 2048),
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": rope_theta,
        "use_qk_norm": model_type == "qwen3",
        "tie_embeddings": hf.get("tie_word_embeddings", False),
        "rope_scaling": rope or None,
        "dim_head": head_dim,
    }
    used = {
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
        "rope_scaling", "tie_word_embeddings", "head_dim", "layer_types",
    }  # fmt: skip
    unsupported = sorted(set(hf) - used - IGNORED_FIELDS - set(REQUIRED_VALUES))
    unsupported += [
        f"{name}={hf[name]!r}" for name, value in REQUIRED_VALUES.items() if hf.get(name, value) != value
    ]
    if any(kind != "full_attention" for kind in hf.get("layer_types") or []):
        unsupported.append("layer_types (only full_attention layers are supported)")
    if unsupported:
        raise ValueError(
            f"{source}: unsupported config field(s) {unsupported}; AstrAI's Transformer cannot "
            "reproduce them, so the model would compute something else"
        )
    try:
        return ModelConfig(**fields)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _is_default_head_dim(head_dim: Any, hidden_size: Any, n_heads: Any) -> bool:
    """Return whether ``head_dim`` is what ``hidden_size // n_heads`` gives anyway (``None`` counts)."""
    if head_dim is None:
        return True
    values = (head_dim, hidden_size, n_heads)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        return False  # ModelConfig reports the invalid value
    return n_heads > 0 and hidden_size % n_heads == 0 and head_dim == hidden_size // n_heads


def config_to_hf(config: ModelConfig, tokenizer: Tokenizer | None = None, dtype: torch.dtype | None = None) -> dict:
    """Translate a ``ModelConfig`` into a Llama (or, with qk-norm, Qwen3) ``config.json`` mapping.

    Raises:
        ValueError: The config uses gated attention, which no Hugging Face architecture has, or it
            would be exported as Llama with ``dim`` not divisible by ``n_heads``.
    """
    if config.use_gated_attention:
        raise ValueError(
            "cannot export a model with use_gated_attention=True: neither Llama nor Qwen3 has an "
            "attention output gate, so the exported model would compute something else"
        )
    model_type = "qwen3" if config.use_qk_norm else "llama"
    if model_type == "llama" and config.dim % config.n_heads:
        # transformers 5.25's LlamaConfig checks this even when head_dim is set, but Qwen3Config does not.
        raise ValueError(
            f"cannot export a model with dim={config.dim} and n_heads={config.n_heads} as llama: "
            "transformers' LlamaConfig rejects a hidden_size that is not divisible by num_attention_heads, "
            "even with head_dim set, so the folder would not load; choose n_heads among the divisors of dim"
        )
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.dim_ffn,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
    }
    if model_type == "llama":
        hf["mlp_bias"] = False
    else:
        hf["use_sliding_window"] = False
    if tokenizer is not None:
        hf.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if dtype is not None:
        hf["torch_dtype"] = str(dtype).removeprefix("torch.")
    return hf


# Checkpoints


def _weight_files(path: Path) -> list[Path]:
    if (path / HF_INDEX_FILE).is_file():
        index = json.loads((path / HF_INDEX_FILE).read_text(encoding="utf-8"))
        return [path / name for name in sorted(set(index["weight_map"].values()))]
    if (path / HF_WEIGHTS_FILE).is_file():
        return [path / HF_WEIGHTS_FILE]
    raise FileNotFoundError(
        f"{path} has no {HF_WEIGHTS_FILE} or {HF_INDEX_FILE}; AstrAI reads safetensors weights only "
        "(convert .bin files with transformers' save_pretrained(safe_serialization=True) first)"
    )


def import_hf_checkpoint(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    load_tokenizer: bool = True,
) -> Checkpoint:
    """Load a Hugging Face Llama or Qwen3 folder as an AstrAI ``Checkpoint``.

    The weights are memory-mapped, not copied, unless ``dtype`` asks for a cast.

    Args:
        path: Folder with ``config.json`` and ``model.safetensors`` (or a sharded index).
        device: Where to put the weights.
        dtype: Cast the weights to this dtype, one tensor at a time; ``None`` keeps the stored one.
        load_tokenizer: Load ``tokenizer.model`` when the folder has one.

    Returns:
        A ``Checkpoint`` whose ``path`` is ``path``; save it with ``save_checkpoint`` to get an
        AstrAI checkpoint directory.

    Raises:
        FileNotFoundError: The folder lacks the config or the weights.
        ValueError: The config or the weights describe a model ``Transformer`` cannot reproduce.
    """
    path = Path(path)
    if not (path / HF_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {HF_CONFIG_FILE}; pass a Hugging Face model folder")
    config = config_from_hf(json.loads((path / HF_CONFIG_FILE).read_text(encoding="utf-8")), str(path / HF_CONFIG_FILE))
    state: dict[str, torch.Tensor] = {}
    unknown = []
    for file in _weight_files(path):
        with safe_open(file, framework="pt", device=str(device)) as weights:
            for hf_name in weights.keys():
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # a RoPE table some older exports stored; it is recomputed from the config
                name = from_hf_name(hf_name)
                if name is None:
                    unknown.append(hf_name)
                    continue
                tensor = weights.get_tensor(hf_name)
                state[name] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    if unknown:
        raise ValueError(
            f"{path}: weights {unknown[:5]} have no counterpart in AstrAI's Transformer "
            "(biases or extra modules); this model cannot be imported"
        )
    model = model_from_state_dict(config, state, source=f"weights in {path} and its {HF_CONFIG_FILE}")
    tokenizer = None
    if load_tokenizer and (path / TOKENIZER_FILE).is_file():
        try:
            tokenizer = Tokenizer(path / TOKENIZER_FILE)
        except ValueError as error:
            raise ValueError(
                f"{path / TOKENIZER_FILE}: {error}; pass load_tokenizer=False to import the weights alone"
            ) from None
    return Checkpoint(model=model, config=config, tokenizer=tokenizer, path=path)


def export_hf_checkpoint(
    source: Checkpoint | Transformer,
    path: str | os.PathLike,
    tokenizer: Tokenizer | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Path:
    """Write a model as a Hugging Face folder that ``AutoModelForCausalLM.from_pretrained`` loads.

    Args:
        source: A ``Checkpoint`` (its tokenizer is used unless ``tokenizer`` is given) or a model.
        path: The folder to write; an existing one is replaced only once the new one is complete.
        tokenizer: Copied as ``tokenizer.model``; its bos, eos and pad ids go into ``config.json``.
        shard_size: Largest size in bytes of one weights file. A model bigger than this is split
            into ``model-0000i-of-0000N.safetensors`` files with a ``model.safetensors.index.json``.

    Returns:
        ``path``.

    Raises:
        ValueError: The model uses gated attention, is a Llama-type model (no ``use_qk_norm``)
            whose ``dim`` is not divisible by ``n_heads``, or ``shard_size`` is not positive.
    """
    if isinstance(source, Checkpoint):
        model, tokenizer = source.model, tokenizer or source.tokenizer
    else:
        model = source
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise ValueError(f"shard_size must be a positive number of bytes, got {shard_size!r}")
    dtype = model.embed_tokens.weight.dtype
    hf_config = config_to_hf(model.config, tokenizer, dtype)  # rejects unexportable configs before writing
    state = {to_hf_name(name): tensor for name, tensor in model_state_dict(model).items()}

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        _write_shards(state, tmp, shard_size)
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        _fsync_directory(tmp)
        _replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_shards(state: dict[str, torch.Tensor], folder: Path, shard_size: int) -> None:
    """Write ``state`` as one file, or as shards of at most ``shard_size`` bytes plus an index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], folder / HF_WEIGHTS_FILE, metadata=metadata)
        return
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file_name, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, file_name))
    total = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / HF_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
