"""``astrai-train``: run a training job from a JSON config."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from .config import TrainConfig
from .context import TrainContextBuilder, check_data_parallel, check_no_checkpoints
from .distributed import launched_by_torchrun, spawn_parallel_fn
from .interrupt import TrainingInterrupted
from .strategy import StrategyFactory
from .trainer import Trainer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="astrai-train")
def main() -> None:
    """Train AstrAI models: pretraining (seq), supervised fine-tuning (sft), DPO and GRPO."""


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-steps", type=click.IntRange(min=1), help="Override max_steps from the config.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Override out_dir from the config.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the newest step-N checkpoint in out_dir, if there is one. "
    "--no-resume starts over, and rejects an out_dir that already has step-N checkpoints.",
)
def run(config_path: Path, max_steps: int | None, out_dir: Path | None, resume: bool) -> None:
    """Train with the settings in CONFIG_PATH (a TrainConfig as JSON).

    Checkpoints, metrics.jsonl and the final model are written to the config's out_dir. With
    "nprocs" above 1 the run starts that many data-parallel processes; under torchrun each process
    runs this command and torchrun decides the process count.
    """
    try:
        config = TrainConfig.from_file(config_path)
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    if max_steps is not None:
        config.max_steps = max_steps
    if out_dir is not None:
        config.out_dir = str(out_dir)
    try:
        check_data_parallel(config, processes=config.nprocs)
        if not resume:
            check_no_checkpoints(config.out_dir)
    except ValueError as error:
        raise click.ClickException(f"{config_path}: {error}") from None

    if config.nprocs > 1 and not launched_by_torchrun():
        _run_spawned(config, resume)
        return
    context = train_process(config.to_dict(), resume)
    if context is not None:
        click.echo(f"trained to step {context.step}; final model in {Path(config.out_dir) / 'final'}")


def train_process(config_data: dict, resume: bool):
    """Train in this process (one rank of a run); exit with 130/143 after a signal-triggered stop."""
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    config = TrainConfig.from_dict(config_data)
    try:
        trainer = Trainer(config, builder=TrainContextBuilder(config, resume=resume))
        return trainer.train()
    except TrainingInterrupted as interrupted:
        if rank == 0:
            click.echo(f"{interrupted}; run the same command again to resume", err=True)
        sys.exit(interrupted.exit_code)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as error:
        if rank == 0:
            click.echo(f"Error: {error}", err=True)
        sys.exit(1)


def _run_spawned(config: TrainConfig, resume: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger(__name__).info("starting %d training processes", config.nprocs)
    try:
        spawn_parallel_fn(train_process, config.nprocs, config.to_dict(), resume)
    except ProcessExitedException as error:
        sys.exit(error.exit_code if error.exit_code and error.exit_code > 0 else 1)
    except ProcessRaisedException as error:
        last_line = str(error).strip().splitlines()[-1]
        raise click.ClickException(f"a training process failed: {last_line}") from None
    click.echo(f"trained with {config.nprocs} processes; final model in {Path(config.out_dir) / 'final'}")


@main.command("strategies")
def list_strategies() -> None:
    """List the registered training strategies."""
    for name in StrategyFactory.available_strategies():
        click.echo(name)


if __name__ == "__main__":
    main()
