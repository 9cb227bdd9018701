"""Assembling everything a run needs into one ``TrainContext``.

``TrainContextBuilder`` does the set-up steps in a fixed order, each as a method that returns the
builder, so a test or a custom script can replace one step (say, pass its own model) and keep the
rest:

    context = (TrainContextBuilder(config)
               .with_tokenizer().with_model().with_dataloader()
               .with_optimizer().with_strategy().with_checkpoint()
               .build())

``build()`` runs every step that was not called explicitly.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from astrai_core import Tokenizer, Transformer, load_checkpoint
from astrai_data import PackedDataset, PreferenceDataset, PromptDataset, ShuffledSampler, open_dataset
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .config import TrainConfig
from .distributed import DistributedState, init_distributed
from .fsdp import check_fsdp_available, load_model_state, load_optimizer_state, shard_model
from .schedule import build_scheduler
from .state import is_training_checkpoint, read_training_state
from .strategy import BaseStrategy, StrategyFactory

logger = logging.getLogger(__name__)

# Any packed file: text and chat windows, preference pairs, or prompts.
TrainingData = PackedDataset | PreferenceDataset | PromptDataset

STEP_DIR = re.compile(r"^step-(\d+)$")

# torch 2.13 deprecates DDP's broadcast_buffers, with a warning, in favour of forward_sync_buffers,
# which older versions lack.
_DDP_BUFFER_SYNC_OPTION = (
    "forward_sync_buffers"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else "broadcast_buffers"
)


@dataclass
class TrainContext:
    """The live state of a run: the model and everything that feeds or updates it."""

    config: TrainConfig
    model: Transformer
    tokenizer: Tokenizer
    strategy: BaseStrategy
    dataset: TrainingData
    sampler: ShuffledSampler
    dataloader: DataLoader
    val_dataset: TrainingData | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    step: int = 0
    resumed_from: Path | None = None
    distributed: DistributedState = DistributedState()
    parallel_model: torch.nn.Module | None = None  # the DistributedDataParallel wrapper, if any
    fully_sharded: bool = False  # True when FSDP shards the model over the ranks (data_parallel="fsdp")


def check_data_parallel(config: TrainConfig, processes: int) -> None:
    """Raise ``ValueError`` if ``data_parallel="fsdp"`` cannot run ``config`` over ``processes`` processes.

    One process ignores ``data_parallel``, so only runs with several are checked.
    """
    if config.data_parallel != "fsdp" or processes <= 1:
        return
    check_fsdp_available()
    if not StrategyFactory.get(config.strategy).supports_fsdp:
        raise ValueError(
            f"strategy {config.strategy!r} does not support data_parallel='fsdp', because its frozen "
            "reference model is a copy of the policy and FSDP-sharded modules cannot be copied; "
            "set data_parallel to 'ddp'"
        )


def check_no_checkpoints(out_dir: str | Path) -> None:
    """Raise ``ValueError`` if ``out_dir`` has ``step-N`` checkpoints, for a run that must start fresh.

    A fresh run there would prune its own new checkpoints whenever the old ones have higher step
    numbers, and a later resume would then continue the old run.
    """
    steps = sorted(path.name for path in Path(out_dir).glob("step-*") if STEP_DIR.match(path.name))
    if steps:
        listed = ", ".join(steps[:3]) + (", ..." if len(steps) > 3 else "")
        raise ValueError(
            f"out_dir {out_dir} already has checkpoints ({listed}) "
            "and starting fresh there would mix the two runs; choose another out_dir (--out-dir) or "
            "delete its step-* folders"
        )


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """Return the ``step-N`` directory with the highest N under ``out_dir``, if any is complete."""
    candidates = []
    for path in Path(out_dir).glob("step-*"):
        match = STEP_DIR.match(path.name)
        if match and is_training_checkpoint(path):
            candidates.append((int(match.group(1)), path))
    return max(candidates)[1] if candidates else None


def _check_resumable(checkpoint, model: Transformer, tokenizer: Tokenizer, path: Path) -> None:
    """Refuse to resume a run whose model or tokenizer differs from the checkpoint's."""
    fix = f"start a new run in another out_dir, or delete {path.parent}'s step-* folders to start over"
    if checkpoint.config != model.config:
        raise ValueError(f"{path} was saved from a model of another shape than this config describes; {fix}")
    if checkpoint.tokenizer is not None and checkpoint.tokenizer.model_proto != tokenizer.model_proto:
        raise ValueError(f"{path} was trained with another tokenizer than this run's; {fix}")


def _open_for_strategy(path: str, kinds: tuple[str, ...], strategy: str) -> TrainingData:
    """Open a packed file and check that ``strategy`` can train on its record kind."""
    dataset = open_dataset(path)
    if dataset.kind not in kinds:
        raise ValueError(
            f"{path} holds {dataset.kind!r} records but strategy {strategy!r} trains on {list(kinds)}; "
            f"pack the right records (astrai-data pack --kind {kinds[0]}) or choose another strategy"
        )
    return dataset


class TrainContextBuilder:
    """Builds a ``TrainContext`` from a ``TrainConfig`` step by step."""

    def __init__(self, config: TrainConfig, resume: bool = True):
        """``resume=False`` makes ``build()`` start fresh, and raises ``ValueError`` if ``out_dir``
        already has ``step-N`` checkpoints (a fresh run there would prune them with its own)."""
        self.config = config
        if not resume:
            check_no_checkpoints(config.out_dir)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and self.device.index is None:
            # Each process of a multi-GPU run uses the GPU of its local rank.
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device is {config.device!r} but this PyTorch build has no CUDA device available; "
                "set device to 'cpu' or install a CUDA build of torch"
            )
        self.distributed = init_distributed(self.device)
        # Spawned runs take the process count from nprocs, torchrun runs from the environment.
        check_data_parallel(config, processes=max(config.nprocs, self.distributed.world_size))
        self.fully_sharded = config.data_parallel == "fsdp" and self.distributed.enabled
        # Under FSDP the weights stay on the CPU until sharding moves each rank's shard to the device.
        self.weights_device = torch.device("cpu") if self.fully_sharded else self.device
        self.tokenizer: Tokenizer | None = None
        self.model: Transformer | None = None
        self.dataset: TrainingData | None = None
        self.val_dataset: TrainingData | None = None
        self.sampler: ShuffledSampler | None = None
        self.parallel_model: torch.nn.Module | None = None
        self._sharded = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.strategy: BaseStrategy | None = None
        self.resume_from: Path | None = None
        self._resume_checked = not resume
        self.step = 0

    def with_tokenizer(self, tokenizer: Tokenizer | None = None) -> TrainContextBuilder:
        if tokenizer is None:
            if self.config.tokenizer:
                tokenizer = Tokenizer(self.config.tokenizer)
            elif self.config.init_from:
                tokenizer = load_checkpoint(self.config.init_from).tokenizer
            if tokenizer is None:
                raise ValueError(
                    "TrainConfig.tokenizer is not set and init_from has no tokenizer.model; "
                    "set tokenizer to the .model file the dataset was packed with"
                )
        self.tokenizer = tokenizer
        return self

    def with_model(self, model: Transformer | None = None) -> TrainContextBuilder:
        if self.tokenizer is None:
            self.with_tokenizer()
        if model is None:
            torch.manual_seed(self.config.seed)
            if self.config.init_from:
                model = load_checkpoint(self.config.init_from, device=self.weights_device).model
                logger.info("starting from the weights in %s", self.config.init_from)
            else:
                model = Transformer(self.config.model_config(vocab_size=self.tokenizer.vocab_size))
        if model.config.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"the model has vocab_size={model.config.vocab_size} but the tokenizer has "
                f"{self.tokenizer.vocab_size} tokens; use the tokenizer the model was trained with"
            )
        self.model = model.to(self.weights_device).train()
        return self

    def _shard_model(self) -> None:
        """Shard the model with FSDP, once, before the optimizer is given its parameters."""
        if self.fully_sharded and not self._sharded:
            shard_model(self.model, self.device, self.distributed.world_size, self.config.dtype)
            self._sharded = True

    def with_dataloader(self) -> TrainContextBuilder:
        if self.tokenizer is None:
            self.with_tokenizer()
        kinds = StrategyFactory.get(self.config.strategy).data_kinds
        self.dataset = _open_for_strategy(self.config.dataset, kinds, self.config.strategy)
        self.dataset.check_tokenizer(self.tokenizer)
        if self.config.val_dataset and self.dataset.kind == "prompt":
            raise ValueError(
                f"val_dataset is set, but {self.config.strategy!r} trains on prompts and has no held-out "
                "loss to compute; remove val_dataset from the config"
            )
        if self.config.val_dataset:
            self.val_dataset = _open_for_strategy(self.config.val_dataset, kinds, self.config.strategy)
            self.val_dataset.check_tokenizer(self.tokenizer)
        max_len = self.model.config.max_len if self.model is not None else None
        if max_len is not None and self.dataset.seq_len > max_len:
            raise ValueError(
                f"{self.config.dataset} has windows of {self.dataset.seq_len} tokens but the model's "
                f"max_len is {max_len}; repack with --seq-len {max_len} or use a longer model"
            )
        self.sampler = ShuffledSampler(
            len(self.dataset),
            seed=self.config.seed,
            rank=self.distributed.rank,
            world_size=self.distributed.world_size,
        )
        return self

    def with_optimizer(self) -> TrainContextBuilder:
        if self.model is None:
            self.with_model()
        self._shard_model()
        opt = self.config.optimizer
        # Weight decay applies to matrices only; norms' gains are left alone, as in GPT-2 and Llama.
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": opt.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
        self.scheduler = build_scheduler(self.optimizer, self.config.max_steps, self.config.schedule)
        return self

    def with_strategy(self) -> TrainContextBuilder:
        if self.model is None:
            self.with_model()
        self.model.gradient_checkpointing = self.config.gradient_checkpointing
        self._shard_model()
        # The strategy runs the wrapped module (DDP, then torch.compile), while checkpoints read the
        # plain one, whose parameter names have no "module." or "_orig_mod." prefix. They share the
        # same parameters. FSDP shards the plain module in place and adds no wrapper.
        model = self.model
        if self.distributed.enabled and not self.fully_sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # The only buffers are the RoPE tables, which every rank computes alike. Broadcasting them
            # would make each forward pass a collective, so rank 0 evaluating alone would hang.
            model = self.parallel_model = DistributedDataParallel(
                model, device_ids=device_ids, **{_DDP_BUFFER_SYNC_OPTION: False}
            )
        if self.config.compile:
            model = torch.compile(model)
        self.strategy = StrategyFactory.create(
            self.config.strategy, model, self.device, tokenizer=self.tokenizer, **self.config.strategy_options
        )
        return self

    def with_checkpoint(self, path: str | Path | None = None) -> TrainContextBuilder:
        """Resume from ``path``, or from the latest ``step-N`` in ``out_dir`` when ``path`` is None."""
        self._resume_checked = True
        path = Path(path) if path is not None else latest_checkpoint(self.config.out_dir)
        if path is None:
            return self
        self._build_missing_parts()
        checkpoint = load_checkpoint(path, device=self.weights_device)
        _check_resumable(checkpoint, self.model, self.tokenizer, path)
        optimizer_state, progress = read_training_state(path, self.scheduler)
        if self.fully_sharded:
            load_model_state(self.model, checkpoint.model.state_dict())
            load_optimizer_state(self.model, self.optimizer, optimizer_state)
        else:
            self.model.load_state_dict(checkpoint.model.state_dict())
            self.optimizer.load_state_dict(optimizer_state)
        self.step = progress["step"]
        self.sampler.consumed = progress["consumed_samples"]
        self.resume_from = path
        logger.info("resuming from %s at step %d", path, self.step)
        return self

    def _build_missing_parts(self) -> None:
        """Run the set-up steps that were not called explicitly, in their fixed order."""
        if self.tokenizer is None:
            self.with_tokenizer()
        if self.model is None:
            self.with_model()
        if self.dataset is None:
            self.with_dataloader()
        if self.optimizer is None:
            self.with_optimizer()

    def build(self) -> TrainContext:
        self._build_missing_parts()
        if self.strategy is None:
            self.with_strategy()
        if not self._resume_checked:
            self.with_checkpoint()
        dataloader = DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            collate_fn=getattr(self.dataset, "collate", None),  # prompts of different lengths
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )
        return TrainContext(
            config=self.config,
            model=self.model,
            tokenizer=self.tokenizer,
            strategy=self.strategy,
            dataset=self.dataset,
            sampler=self.sampler,
            dataloader=dataloader,
            val_dataset=self.val_dataset,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            device=self.device,
            step=self.step,
            resumed_from=self.resume_from,
            distributed=self.distributed,
            parallel_model=self.parallel_model,
            fully_sharded=self.fully_sharded,
        )
