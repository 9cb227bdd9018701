"""Training run settings as a validated, JSON-serialisable dataclass.

Design choices:
- One JSON file describes a run: which model (a preset, explicit fields, or a checkpoint to start
  from), which packed dataset, which strategy, the optimizer, the schedule and the loop.
- Every field is checked at construction, so a typo or a bad value stops the run before any data is
  read, with a message that names the field, the value and the fix.
- Relative paths in a config file are resolved against the file's own folder, so a config works
  from any working directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from astrai_core import PRESETS, ModelConfig

SCHEDULES = ("cosine", "constant", "wsd")
DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")
DATA_PARALLEL_MODES = ("ddp", "fsdp")


@dataclass
class OptimizerConfig:
    """AdamW settings."""

    lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _require_numbers(self, "optimizer.", ("lr", "weight_decay", "beta1", "beta2", "eps"))
        _require(self.lr > 0, "optimizer.lr", self.lr, "a positive learning rate such as 3e-4")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "a value >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"optimizer.{name}", value, "a value in [0, 1)")
        _require(self.eps > 0, "optimizer.eps", self.eps, "a small positive value such as 1e-8")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warmup, then cosine decay, a constant rate, or warmup-stable-decay."""

    name: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2  # wsd only: the share of steps spent decaying at the end

    def __post_init__(self) -> None:
        _require_numbers(self, "schedule.", ("warmup_steps", "min_lr_ratio", "decay_fraction"))
        _require(self.name in SCHEDULES, "schedule.name", self.name, f"one of {list(SCHEDULES)}")
        _require(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, "a value >= 0")
        _require(0 <= self.min_lr_ratio <= 1, "schedule.min_lr_ratio", self.min_lr_ratio, "a value in [0, 1]")
        _require(0 < self.decay_fraction <= 1, "schedule.decay_fraction", self.decay_fraction, "a value in (0, 1]")


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Attributes:
        dataset: Packed Arrow file written by ``astrai-data pack``.
        out_dir: Folder for checkpoints (``step-N/``, ``final/``) and ``metrics.jsonl``.
        model: A preset name (``"tiny"``), or a mapping of ``ModelConfig`` fields, optionally with a
            ``"preset"`` key whose fields the others override. Ignored when ``init_from`` is set.
        init_from: A checkpoint directory whose weights start the run (fine-tuning).
        tokenizer: SentencePiece model saved with each checkpoint; defaults to the one in
            ``init_from``. Its vocabulary size must match the model's.
        val_dataset: Packed Arrow file for held-out loss, evaluated every ``eval_interval`` steps.
        strategy: Name registered with ``StrategyFactory`` (``"seq"``, ``"sft"``, ...).
        strategy_options: Keyword arguments for the strategy (e.g. ``{"label_smoothing": 0.1}``).
        batch_size: Sequences per micro-batch.
        accumulation_steps: Micro-batches whose gradients are summed into one optimizer step.
        max_steps: Optimizer steps to run.
        max_grad_norm: Clip the global gradient norm to this value; 0 disables clipping.
        ckpt_interval: Save a checkpoint every N steps; 0 saves only at the end.
        keep_checkpoints: How many ``step-N`` checkpoints to keep (oldest are removed).
        log_interval: Print and record metrics every N steps.
        eval_interval: Evaluate held-out loss every N steps; 0 evaluates only at the end.
        eval_batches: Maximum micro-batches per evaluation.
        seed: Seed for weight initialisation and data order.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: ``"float32"``, or ``"bfloat16"`` for autocast on supported hardware.
        num_threads: Torch CPU threads per process. 0 keeps torch's default in a 1-process run,
            and in a multi-process CPU run shares the cores out between the processes (unless
            ``OMP_NUM_THREADS`` is set).
        on_nonfinite: What happens when a step's loss or gradient norm is NaN or infinite:
            ``"stop"`` raises ``FloatingPointError`` naming the step, ``"skip"`` drops that update,
            logs a warning and goes on.
        gradient_checkpointing: Recompute each block's activations in the backward pass, trading
            about a third more compute for much less activation memory.
        compile: Run the model through ``torch.compile``.
        nprocs: Data-parallel processes started by ``astrai-train run`` (ignored under
            ``torchrun``, which starts its own). ``batch_size`` is per process, so the global
            batch is ``batch_size x accumulation_steps x nprocs``.
        data_parallel: How a multi-process run shares the model. ``"ddp"``: every process keeps
            a full copy of the weights, gradients and optimizer state (``DistributedDataParallel``).
            ``"fsdp"``: they are sharded across the processes with FSDP2
            (``torch.distributed.fsdp.fully_shard``), one unit per Transformer block plus the
            root. Checkpoints are the same either way. Has no effect in a 1-process run. The
            ``dpo`` and ``grpo`` strategies support only ``"ddp"``.
    """

    dataset: str
    out_dir: str
    model: str | dict[str, Any] = "tiny"
    init_from: str | None = None
    tokenizer: str | None = None
    val_dataset: str | None = None
    strategy: str = "seq"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    batch_size: int = 16
    accumulation_steps: int = 1
    max_steps: int = 1000
    max_grad_norm: float = 1.0
    ckpt_interval: int = 0
    keep_checkpoints: int = 2
    log_interval: int = 10
    eval_interval: int = 0
    eval_batches: int = 50
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    num_threads: int = 0
    on_nonfinite: str = "stop"
    gradient_checkpointing: bool = False
    compile: bool = False
    nprocs: int = 1
    data_parallel: str = "ddp"

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, dict):
            self.optimizer = _build(OptimizerConfig, self.optimizer, "optimizer")
        if isinstance(self.schedule, dict):
            self.schedule = _build(ScheduleConfig, self.schedule, "schedule")
        for name in ("batch_size", "accumulation_steps", "max_steps", "log_interval", "eval_batches", "nprocs"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 1, name, value, "a positive integer")
        for name in ("ckpt_interval", "eval_interval", "keep_checkpoints", "seed", "num_threads"):
            value = getattr(self, name)
            _require(_is_int(value) and value >= 0, name, value, "an integer >= 0")
        _require_numbers(self, "", ("max_grad_norm",))
        _require(self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "a value >= 0 (0 disables it)")
        _require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {list(DTYPES)}")
        _require(
            self.on_nonfinite in NONFINITE_POLICIES, "on_nonfinite", self.on_nonfinite, f"one of {list(NONFINITE_POLICIES)}"
        )
        _require(
            self.data_parallel in DATA_PARALLEL_MODES,
            "data_parallel",
            self.data_parallel,
            f"one of {list(DATA_PARALLEL_MODES)}",
        )
        for name in ("gradient_checkpointing", "compile"):
            _require(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        _require(
            self.device == "cpu" or self.device.startswith(("cuda", "mps")),
            "device",
            self.device,
            "'cpu', 'cuda' or 'cuda:N'",
        )
        _require(isinstance(self.strategy_options, dict), "strategy_options", self.strategy_options, "an object")
        if self.init_from is None:
            # Validate the model description now, not after the data is loaded. The tokenizer
            # supplies vocab_size at build time, so fields without a preset may leave it out.
            spec = self.model if isinstance(self.model, dict) else {"preset": self.model}
            needs_stand_in = "preset" not in spec and "vocab_size" not in spec
            self.model_config(vocab_size=1 if needs_stand_in else None)

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """Build the ``ModelConfig`` this run trains from scratch, optionally fixing its vocabulary size."""
        spec = self.model
        if isinstance(spec, str):
            spec = {"preset": spec}
        _require(isinstance(spec, dict), "model", spec, "a preset name or an object of ModelConfig fields")
        spec = dict(spec)
        preset = spec.pop("preset", None)
        if vocab_size is not None:
            spec["vocab_size"] = vocab_size
        try:
            if preset is not None:
                if preset not in PRESETS:
                    raise ValueError(f"unknown preset {preset!r}; available presets: {sorted(PRESETS)}")
                known = {f.name for f in fields(ModelConfig)}
                unknown = sorted(set(spec) - known)
                if unknown:
                    raise ValueError(f"unknown field(s) {unknown}; valid fields are {sorted(known)}")
                return ModelConfig.preset(preset, **spec)
            return ModelConfig.from_dict(spec, source="model")
        except ValueError as error:
            raise ValueError(f"TrainConfig.model: {error}") from None

    # Serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | os.PathLike | None = None) -> TrainConfig:
        """Build a config from a mapping; relative paths are resolved against ``base_dir``."""
        config = _build(cls, data, "TrainConfig")
        if base_dir is not None:
            for name in ("dataset", "out_dir", "init_from", "tokenizer", "val_dataset"):
                value = getattr(config, name)
                if value is not None:
                    setattr(config, name, str(Path(base_dir, value)))
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _require_numbers(owner: object, prefix: str, names: tuple[str, ...]) -> None:
    """Reject non-numeric values before any comparison, so the message names the field."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{prefix}{name} must be a number, got {value!r}")


def _build(cls, data: object, where: str):
    """Construct dataclass ``cls`` from ``data``, naming unknown or missing keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(known)}")
    required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {missing}")
    return cls(**data)
