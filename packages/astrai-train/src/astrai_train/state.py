"""Saving and restoring the trainer's state beside the model weights, without pickle.

A training checkpoint is a model checkpoint (``astrai_core.save_checkpoint``) plus:
- ``optimizer.safetensors``: every optimizer state tensor, keyed ``state.<param index>.<name>``,
  and the CPU random-number generator state;
- ``trainer_state.json``: step, consumed samples, the optimizer's param-group settings and the
  config of the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


def write_training_state(
    directory: Path, optimizer_state: dict[str, Any], scheduler, progress: dict[str, Any]
) -> None:
    """Write the optimizer and progress files into ``directory``.

    ``optimizer_state`` is in the form ``Optimizer.state_dict()`` returns, with full (unsharded)
    tensors.
    """
    tensors: dict[str, torch.Tensor] = {}
    for param_index, param_state in optimizer_state["state"].items():
        for name, value in param_state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{param_index}.{name}"] = tensor.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    save_file(tensors, directory / OPTIMIZER_FILE)
    payload = {
        **progress,
        "param_groups": optimizer_state["param_groups"],
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def read_training_state(directory: Path, scheduler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the scheduler and the CPU RNG from ``directory``.

    Returns the optimizer state, in the form ``Optimizer.state_dict()`` returns, and the progress
    fields.
    """
    payload = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(directory / OPTIMIZER_FILE)
    torch.set_rng_state(tensors.pop("rng.cpu"))
    param_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, param_index, name = key.split(".", 2)
        param_state.setdefault(int(param_index), {})[name] = tensor
    optimizer_state = {"state": param_state, "param_groups": payload.pop("param_groups")}
    scheduler_state = payload.pop("scheduler")
    if scheduler is not None and scheduler_state is not None:
        scheduler.load_state_dict(scheduler_state)
    return optimizer_state, payload


def is_training_checkpoint(directory: Path) -> bool:
    return (directory / STATE_FILE).is_file() and (directory / OPTIMIZER_FILE).is_file()
