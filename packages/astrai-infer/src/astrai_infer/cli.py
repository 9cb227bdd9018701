"""Command-line interface: ``astrai-infer generate``, ``chat`` and ``convert from-hf|to-hf``.

Design choices:
- Generated text streams to stdout. Loading messages, the chat prompt marker and timing summaries
  go to stderr, so ``astrai-infer generate ... > out.txt`` captures only the text.
- The settings are validated as a ``GenerationConfig`` before the model loads, so a bad flag fails
  at once. Errors from the library become one line ``Error: ...`` with exit status 1.
- ``chat`` keeps the conversation as a list of messages and encodes all of it with the chat
  template on every turn. Each turn therefore prefills the whole conversation again; no KV cache is
  kept between turns. A turn that would overflow the model's context is reported and dropped, and
  ``/reset`` starts a new conversation.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import torch

from astrai_core import export_hf_checkpoint, import_hf_checkpoint, load_checkpoint, save_checkpoint

from .__about__ import __version__
from .config import GenerationConfig
from .generator import Generator, Prompt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHAT_HELP = "type a message and press Enter; /reset clears the conversation, /exit or Ctrl-D quits"


def generation_options(command: Callable) -> Callable:
    """Add the options shared by ``generate`` and ``chat``: checkpoint, device and sampling."""
    options = [
        click.option(
            "--model",
            "model_path",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Checkpoint directory with config.json, model.safetensors and tokenizer.model.",
        ),
        click.option(
            "--max-new-tokens", type=int, default=256, show_default=True, help="Maximum tokens to generate."
        ),
        click.option(
            "--temperature",
            type=float,
            default=1.0,
            show_default=True,
            help="Sampling temperature; 0 always takes the most likely token (greedy).",
        ),
        click.option(
            "--top-k",
            type=int,
            default=0,
            show_default=True,
            help="Sample among the k most likely tokens; 0 for all.",
        ),
        click.option(
            "--top-p",
            type=float,
            default=1.0,
            show_default=True,
            help="Sample among the most likely tokens holding this probability mass; 1.0 for all.",
        ),
        click.option(
            "--min-p",
            type=float,
            default=0.0,
            show_default=True,
            help="Sample among tokens at least this fraction as likely as the most likely one; 0 for all.",
        ),
        click.option(
            "--repetition-penalty",
            type=float,
            default=1.0,
            show_default=True,
            help="Above 1 makes tokens of the prompt and the reply less likely; 1.0 turns it off.",
        ),
        click.option(
            "--presence-penalty",
            type=float,
            default=0.0,
            show_default=True,
            help="Subtracted from the logit of every token already generated, in [-2, 2].",
        ),
        click.option(
            "--frequency-penalty",
            type=float,
            default=0.0,
            show_default=True,
            help="Subtracted from a token's logit per time it was generated, in [-2, 2].",
        ),
        click.option(
            "--stop",
            multiple=True,
            help="Stop before this string; it is left out of the reply. Repeat for several.",
        ),
        click.option(
            "--truncate-prompt",
            is_flag=True,
            help="Keep the end of a prompt too long for the context instead of failing.",
        ),
        click.option(
            "--seed", type=int, default=None, help="Random seed; the same seed repeats the same output."
        ),
        click.option(
            "--device", default="cpu", show_default=True, help="Device to run on, such as cpu or cuda."
        ),
        click.option(
            "--dtype",
            type=click.Choice(sorted(DTYPES)),
            default=None,
            help="Cast the weights to this dtype; by default they keep the dtype they were saved in.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrai-infer")
def main() -> None:
    """Generate text with an AstrAI checkpoint."""


@main.command()
@generation_options
@click.option("--chat", "as_chat", is_flag=True, help="Send PROMPT as a user message in the chat template.")
@click.argument("prompt")
def generate(
    model_path: Path, device: str, dtype: str | None, as_chat: bool, prompt: str, **settings: object
) -> None:
    """Stream a continuation of PROMPT to stdout."""
    with _errors_as_click_exceptions():
        config = GenerationConfig(**settings)
        generator = _load_generator(model_path, device, dtype)
        _stream_reply(generator, [{"role": "user", "content": prompt}] if as_chat else prompt, config)


@main.command()
@generation_options
@click.option("--system", default=None, help="System message that opens every conversation.")
def chat(model_path: Path, device: str, dtype: str | None, system: str | None, **settings: object) -> None:
    """Chat with the model, streaming its replies.

    Reads one message per line from stdin. /reset starts a new conversation, /exit or end of input
    quits.
    """
    with _errors_as_click_exceptions():
        config = GenerationConfig(**settings)
        generator = _load_generator(model_path, device, dtype)
        _run_chat(generator, config, system)


@main.group()
def convert() -> None:
    """Convert checkpoints to and from Hugging Face folders (Llama and Qwen3)."""


@convert.command("from-hf")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(sorted(DTYPES)),
    default=None,
    help="Cast the weights to this dtype; by default they keep the stored dtype.",
)
def from_hf(source: Path, target: Path, dtype: str | None) -> None:
    """Turn the Hugging Face folder SOURCE into the AstrAI checkpoint TARGET.

    SOURCE holds config.json and model.safetensors (or a sharded model.safetensors.index.json),
    and optionally a SentencePiece tokenizer.model.
    """
    with _errors_as_click_exceptions():
        start = time.perf_counter()
        checkpoint = import_hf_checkpoint(source, dtype=DTYPES[dtype] if dtype else None)
        save_checkpoint(target, checkpoint.model, checkpoint.tokenizer)
        _report_conversion(checkpoint.model, target, start)


@convert.command("to-hf")
@click.argument("source", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("target", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=5 * 1024,
    show_default=True,
    help="Largest weights file in MiB; bigger models are split into shards with an index.",
)
def to_hf(source: Path, target: Path, shard_size: int) -> None:
    """Turn the AstrAI checkpoint SOURCE into the Hugging Face folder TARGET.

    transformers loads TARGET with AutoModelForCausalLM.from_pretrained: a model with qk-norm as
    Qwen3ForCausalLM, any other as LlamaForCausalLM.
    """
    with _errors_as_click_exceptions():
        start = time.perf_counter()
        checkpoint = load_checkpoint(source)
        export_hf_checkpoint(checkpoint, target, shard_size=shard_size * 1024**2)
        _report_conversion(checkpoint.model, target, start)


def _report_conversion(model: torch.nn.Module, target: Path, start: float) -> None:
    size = sum(path.stat().st_size for path in target.iterdir() if path.is_file())
    parameters = sum(parameter.numel() for parameter in model.parameters())
    click.echo(
        f"wrote {target} ({parameters / 1e6:.1f}M parameters, {size / 1024**2:.1f} MiB) "
        f"in {time.perf_counter() - start:.1f} s",
        err=True,
    )


def _run_chat(generator: Generator, config: GenerationConfig, system: str | None) -> None:
    """Read user messages from stdin and stream replies until ``/exit`` or end of input."""
    opening = [{"role": "system", "content": system}] if system else []
    messages = list(opening)
    click.echo(CHAT_HELP, err=True)
    while True:
        click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            click.echo(err=True)
            return
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            return
        if command == "/reset":
            messages = list(opening)
            click.echo("conversation cleared", err=True)
            continue
        if command.startswith("/"):
            click.echo(f"unknown command {command!r}; {CHAT_HELP}", err=True)
            continue

        messages.append({"role": "user", "content": text})
        try:
            reply = _stream_reply(generator, messages, config)
        except ValueError as error:  # the conversation no longer fits the context
            messages.pop()
            click.echo(f"Error: {error}. Type /reset to start a new conversation.", err=True)
            continue
        messages.append({"role": "assistant", "content": reply})


def _load_generator(model_path: Path, device: str, dtype: str | None) -> Generator:
    """Load the checkpoint, reporting its size and load time on stderr."""
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # CPU-only builds raise AssertionError for cuda
        raise click.ClickException(f"device {device!r} is not usable: {_first_line(error)}") from None
    click.echo(f"loading {model_path} on {device}", err=True)
    start = time.perf_counter()
    generator = Generator.from_checkpoint(model_path, device=device, dtype=DTYPES[dtype] if dtype else None)
    parameters = sum(parameter.numel() for parameter in generator.model.parameters())
    weight_dtype = next(generator.model.parameters()).dtype
    click.echo(
        f"loaded {parameters / 1e6:.1f}M parameters ({weight_dtype}) in {time.perf_counter() - start:.1f} s",
        err=True,
    )
    return generator


def _stream_reply(generator: Generator, prompt: Prompt, config: GenerationConfig) -> str:
    """Stream the reply to stdout, print a timing summary to stderr and return the reply's text."""
    start = time.perf_counter()
    pieces = []
    for chunk in generator.stream(prompt, config):
        if chunk.text:
            click.echo(chunk.text, nl=False)
            pieces.append(chunk.text)
    click.echo()
    elapsed = time.perf_counter() - start
    click.echo(
        f"prompt {chunk.prompt_tokens} tokens | generated {chunk.completion_tokens} tokens in {elapsed:.2f} s"
        f" | {chunk.completion_tokens / max(elapsed, 1e-9):.1f} tok/s | finish_reason {chunk.finish_reason}",
        err=True,
    )
    return "".join(pieces)


@contextlib.contextmanager
def _errors_as_click_exceptions() -> Iterator[None]:
    """Turn library errors into ``click.ClickException`` so click prints ``Error: ...`` and exits 1."""
    try:
        yield
    except (ValueError, OSError, RuntimeError) as error:
        raise click.ClickException(_first_line(error)) from None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
