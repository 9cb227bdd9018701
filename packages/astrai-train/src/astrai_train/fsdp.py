"""Fully sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Design choices:
- Each Transformer block is one FSDP unit and the root (embedding, final norm, output projection)
  is another. So a forward or backward pass gathers the full weights of one block at a time (FSDP
  may prefetch the next one), plus those of the root, which FSDP keeps gathered from forward to
  backward by default. The tied output projection shares the embedding's unit.
- ``fully_shard`` changes the model in place: its parameters become sharded ``DTensor``s and its
  class becomes an FSDP subclass, so the model object, its parameter names and the code that calls
  it stay the same. The optimizer must be created after sharding, because it must be given the
  sharded parameters.
- Gradients are reduce-scattered (and averaged over ranks, as DDP averages them) after every
  micro-batch. Skipping that until the last micro-batch, as DDP's ``no_sync`` does, would keep a
  full, unsharded gradient on every rank, which is the memory FSDP exists to save.
- With ``dtype="bfloat16"`` the weights are all-gathered and computed in bfloat16 while the
  sharded weights, the optimizer state and the gradient reduction stay in float32
  (``MixedPrecisionPolicy``).
- Checkpoints keep the single-process format: the full weights and the full optimizer state are
  gathered to rank 0's CPU, and the optimizer state is keyed by parameter index as
  ``Optimizer.state_dict()`` keys it. So a checkpoint resumes under FSDP, DDP or one process, with
  any process count. Every rank must take part in gathering and in loading.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from astrai_core import Transformer, model_from_state_dict

try:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError as error:  # an older torch without FSDP2, or a build without torch.distributed
    FSDP_IMPORT_ERROR: ImportError | None = error
else:
    FSDP_IMPORT_ERROR = None
    # Full (unsharded) tensors, copied to rank 0's CPU. The other ranks get empty results.
    GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # Load from full tensors that every rank has. Each rank keeps only its own shard.
    LOAD_FULL = StateDictOptions(full_state_dict=True)

logger = logging.getLogger(__name__)


def check_fsdp_available() -> None:
    """Raise ``ValueError`` if this torch build lacks what ``data_parallel="fsdp"`` uses."""
    if FSDP_IMPORT_ERROR is not None:
        raise ValueError(
            f"data_parallel='fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard), which torch "
            f"{torch.__version__} does not provide ({FSDP_IMPORT_ERROR}); install a newer torch or set "
            "data_parallel to 'ddp'"
        )


def shard_model(model: Transformer, device: torch.device, world_size: int, dtype: str) -> None:
    """Shard ``model`` in place over all ``world_size`` ranks: one FSDP unit per block, plus the root.

    ``fully_shard`` moves each unit's parameters to ``device`` just before it shards them and frees
    the full copy, so during start-up a GPU stores the full weights of one unit at a time.
    NOTE: this path has not been run on a GPU. CPU runs with gloo are tested.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the mesh uses the current CUDA device
    mesh = init_device_mesh(device.type, (world_size,))
    if dtype == "bfloat16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    for block in model.layers:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    logger.info("sharded the model over %d processes with FSDP (%d blocks + root)", world_size, len(model.layers))


def gather_model(model: Transformer) -> Transformer | None:
    """Gather the full weights to rank 0's CPU and return them there as a plain ``Transformer``.

    Every rank must call it, and ranks other than 0 return None.
    """
    state = get_model_state_dict(model, options=GATHER_TO_RANK0)
    if dist.get_rank() != 0:
        return None
    return model_from_state_dict(model.config, state, source="the weights gathered from the FSDP shards")


def gather_optimizer_state(model: Transformer, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Gather the full optimizer state to rank 0's CPU, keyed as ``Optimizer.state_dict()`` keys it.

    Every rank must call it, and ranks other than 0 return None.
    """
    gathered = get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK0)
    if dist.get_rank() != 0:
        return None
    names = _parameter_names(model, optimizer)
    unknown = sorted(set(gathered["state"]) - set(names))
    if unknown:
        raise RuntimeError(f"the gathered optimizer state has parameters the optimizer does not list: {unknown[:5]}")
    state = {index: gathered["state"][name] for index, name in enumerate(names) if name in gathered["state"]}
    return {"state": state, "param_groups": optimizer.state_dict()["param_groups"]}


def load_model_state(model: Transformer, state: dict[str, torch.Tensor]) -> None:
    """Load full weights (as ``Transformer.state_dict()`` names them) into a sharded ``model``.

    Every rank must call it with the same weights. ``state`` is changed in place.
    """
    set_model_state_dict(model, state, options=LOAD_FULL)


def load_optimizer_state(model: Transformer, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state, keyed by parameter index, into the optimizer of a sharded ``model``.

    Every rank must call it with the same state, before the first backward pass.
    """
    names = _parameter_names(model, optimizer)
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]]
    by_name = {names[index]: values for index, values in state["state"].items()}
    set_optimizer_state_dict(model, optimizer, {"state": by_name, "param_groups": groups}, options=LOAD_FULL)


def _parameter_names(model: Transformer, optimizer: torch.optim.Optimizer) -> list[str]:
    """Name each of the optimizer's parameters, in the order ``Optimizer.state_dict()`` numbers them."""
    names = {parameter: name for name, parameter in model.named_parameters()}
    return [names[parameter] for group in optimizer.param_groups for parameter in group["params"]]
