"""``astrai-train``: run a training job from a JSON config."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import TrainConfig
from .context import TrainContextBuilder
from .interrupt import TrainingInterrupted
from .strategy import StrategyFactory
from .trainer import Trainer


@click.group()
@click.version_option(package_name="astrai-train")
def main() -> None:
    """Train AstrAI models: pretraining (seq) and supervised fine-tuning (sft)."""


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-steps", type=click.IntRange(min=1), help="Override max_steps from the config.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Override out_dir from the config.")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the newest step-N checkpoint in out_dir, if there is one.",
)
def run(config_path: Path, max_steps: int | None, out_dir: Path | None, resume: bool) -> None:
    """Train with the settings in CONFIG_PATH (a TrainConfig as JSON).

    Checkpoints, metrics.jsonl and the final model are written to the config's out_dir.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        config = TrainConfig.from_file(config_path)
        if max_steps is not None:
            config.max_steps = max_steps
        if out_dir is not None:
            config.out_dir = str(out_dir)
        trainer = Trainer(config, builder=TrainContextBuilder(config, resume=resume))
        context = trainer.train()
    except TrainingInterrupted as interrupted:
        click.echo(f"{interrupted}; run the same command again to resume", err=True)
        sys.exit(interrupted.exit_code)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"trained to step {context.step}; final model in {Path(config.out_dir) / 'final'}")


@main.command("strategies")
def list_strategies() -> None:
    """List the registered training strategies."""
    for name in StrategyFactory.available_strategies():
        click.echo(name)


if __name__ == "__main__":
    main()
