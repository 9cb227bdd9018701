"""AstrAI training: configs, the trainer, strategies, schedules and callbacks."""

from .__about__ import __version__
from .callbacks import CheckpointCallback, MetricLoggerCallback, ProgressCallback, TrainCallback
from .config import OptimizerConfig, ScheduleConfig, TrainConfig
from .context import TrainContext, TrainContextBuilder, latest_checkpoint
from .distributed import DistributedState, spawn_parallel_fn
from .dpo import DPOStrategy, sequence_log_probs
from .grpo import GRPOStrategy, group_advantages
from .rewards import REWARD_FUNCTIONS, get_reward, register_reward
from .schedule import build_scheduler, lr_multiplier
from .strategy import BaseStrategy, LossOutput, SEQStrategy, SFTStrategy, StrategyFactory
from .evaluation import evaluate_by_language, evaluate_loss, language_groups
from .interrupt import TrainingInterrupted
from .trainer import Trainer, default_callbacks

__all__ = [
    "REWARD_FUNCTIONS",
    "BaseStrategy",
    "CheckpointCallback",
    "DPOStrategy",
    "GRPOStrategy",
    "DistributedState",
    "LossOutput",
    "MetricLoggerCallback",
    "OptimizerConfig",
    "ProgressCallback",
    "SEQStrategy",
    "SFTStrategy",
    "ScheduleConfig",
    "StrategyFactory",
    "TrainCallback",
    "TrainConfig",
    "TrainContext",
    "TrainContextBuilder",
    "TrainingInterrupted",
    "Trainer",
    "__version__",
    "build_scheduler",
    "default_callbacks",
    "evaluate_by_language",
    "evaluate_loss",
    "get_reward",
    "group_advantages",
    "language_groups",
    "latest_checkpoint",
    "lr_multiplier",
    "register_reward",
    "sequence_log_probs",
    "spawn_parallel_fn",
]
