"""Training strategies: each turns a batch into a loss and a few metrics.

Design choices:
- A strategy owns only the objective. The trainer owns the loop, the optimizer and the devices, so a
  new objective is one small class registered by name with ``StrategyFactory.register``.
- Batches are dicts of tensors as ``astrai_data.PackedDataset`` yields them: ``input_ids`` (B, T)
  and ``labels`` (B, T), with -100 wherever no loss is taken (padding, prompt tokens in SFT), and
  ``position_ids`` and ``document_ids`` (B, T). When a batch has the last two, SEQ and SFT pass
  them to the model, so documents packed into one window do not attend to each other.
- ``compute_loss`` returns the mean loss over its units (target tokens for SEQ/SFT, pairs for DPO,
  prompts for GRPO) and how many there were. ``loss_weight`` counts the same units before the
  forward pass, so the trainer can weight micro-batches and processes by them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from astrai_core import Tokenizer
from torch import nn

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    """The loss to back-propagate and numbers worth logging.

    Attributes:
        loss: Mean loss over the batch's units.
        num_tokens: Number of those units (target tokens, pairs or prompts, as the strategy defines).
        metrics: Strategy-specific numbers for the step log.
    """

    loss: torch.Tensor
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


class BaseStrategy:
    """Base class of training objectives.

    Attributes:
        data_kinds: Record kinds of packed files (``astrai-data pack``) this strategy trains on.
        model: The module to run; in a multi-process or compiled run, the wrapped module.
        tokenizer: The run's tokenizer, for strategies that generate or decode text.
        supports_fsdp: Whether the strategy can train a model sharded with FSDP
            (``data_parallel="fsdp"``). A strategy cannot if it copies the model, because FSDP-sharded
            modules raise an error in ``copy.deepcopy``, or if the ranks may run different numbers
            of forward passes, because each forward pass all-gathers weights from every rank.
        loss_unit: Plural name of what ``loss_weight`` counts, for logs.
    """

    data_kinds: tuple[str, ...] = ("text", "chat")
    supports_fsdp: bool = True
    loss_unit: str = "tokens"

    def __init__(
        self, model: nn.Module, device: torch.device | str = "cpu", tokenizer: Tokenizer | None = None, **options
    ):
        if options:
            raise ValueError(
                f"strategy {type(self).__name__} got unknown option(s) {sorted(options)}; "
                "remove them from strategy_options"
            )
        self.model = model
        self.device = torch.device(device)
        self.tokenizer = tokenizer

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        raise NotImplementedError

    def loss_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """Number of units ``compute_loss`` averages over: by default the labels that are not -100.

        The trainer weights each micro-batch by this count, so a step's loss is the mean over all
        its units, whatever the accumulation steps and the number of processes. A strategy whose
        loss averages over something else (pairs, sequences) overrides it.
        """
        return int((batch["labels"] != IGNORE_INDEX).sum())


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the plain module inside ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over positions whose label is not -100, and how many there are."""
    B, T, V = logits.shape
    num_tokens = int((labels != IGNORE_INDEX).sum())
    if num_tokens == 0:
        # Keep the graph connected so backward works; the step contributes nothing.
        return logits.sum() * 0.0, 0
    loss = F.cross_entropy(
        logits.reshape(B * T, V).float(),
        labels.reshape(B * T),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )
    return loss, num_tokens


class SEQStrategy(BaseStrategy):
    """Pretraining: predict every next token of the packed text."""

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", label_smoothing: float = 0.0, **options):
        super().__init__(model, device, **options)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"strategy_options.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> LossOutput:
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        document_inputs = {
            name: batch[name].to(self.device, non_blocking=True)
            for name in ("position_ids", "document_ids")
            if name in batch
        }
        logits = self.model(input_ids, **document_inputs)["logits"]  # (B, T, V)
        loss, num_tokens = token_cross_entropy(logits, labels, self.label_smoothing)
        return LossOutput(loss, num_tokens)


class SFTStrategy(SEQStrategy):
    """Supervised fine-tuning: the same next-token loss, taken only on assistant tokens.

    The dataset carries the mask (prompt and padding labels are -100), so the objective is the
    pretraining one; the class exists so a run names what it does and can grow SFT-only options.
    """


class StrategyFactory:
    """Registry of strategies by name; ``@StrategyFactory.register("name")`` adds one."""

    STRATEGY_MAP: dict[str, type[BaseStrategy]] = {}

    @classmethod
    def register(cls, name: str) -> Callable[[type[BaseStrategy]], type[BaseStrategy]]:
        def decorator(strategy_cls: type[BaseStrategy]) -> type[BaseStrategy]:
            if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, BaseStrategy)):
                raise TypeError(f"@StrategyFactory.register({name!r}) must decorate a BaseStrategy subclass")
            if name in cls.STRATEGY_MAP and cls.STRATEGY_MAP[name] is not strategy_cls:
                raise ValueError(f"a strategy named {name!r} is already registered ({cls.STRATEGY_MAP[name].__name__})")
            cls.STRATEGY_MAP[name] = strategy_cls
            return strategy_cls

        return decorator

    @classmethod
    def get(cls, name: str) -> type[BaseStrategy]:
        if name not in cls.STRATEGY_MAP:
            raise ValueError(
                f"unknown strategy {name!r}; available strategies: {cls.available_strategies()}. "
                "Register your own with @StrategyFactory.register(name)"
            )
        return cls.STRATEGY_MAP[name]

    @classmethod
    def create(cls, name: str, model: nn.Module, device: torch.device | str = "cpu", **options) -> BaseStrategy:
        try:
            return cls.get(name)(model, device, **options)
        except TypeError as error:
            # A wrongly typed option (a string where a number belongs) fails inside a comparison.
            raise ValueError(f"strategy_options for {name!r} has a value of the wrong type: {error}") from None

    @classmethod
    def available_strategies(cls) -> list[str]:
        return sorted(cls.STRATEGY_MAP)


StrategyFactory.register("seq")(SEQStrategy)
StrategyFactory.register("sft")(SFTStrategy)
