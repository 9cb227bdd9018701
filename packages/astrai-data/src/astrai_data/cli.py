"""The ``astrai-data`` command line: train a tokenizer, pack a corpus, inspect a packed file.

Design choices:
- A click group, one command per task. Results and summaries go to stdout, progress and warnings go
  to stderr, so ``astrai-data inspect FILE > report.txt`` captures only the report.
- Invalid options are click usage errors (exit code 2). Errors from the library (an invalid record,
  a damaged file, a tokenizer mismatch, a file system error) become one ``Error: ...`` line and exit
  code 1. Their messages already name the file and the fix, and a traceback would bury that.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import groupby
from pathlib import Path

import click
from astrai_core import Tokenizer

from .__about__ import __version__
from .corpus import Corpus
from .dataset import open_dataset
from .inspection import inspect_pack
from .packing import PackStats, pack_corpus
from .records import NORMALIZATIONS, RECORD_KINDS
from .tokenizer_training import measure_compression, train_tokenizer
from .truncation import TOO_LONG_POLICIES

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"
ROW_NOUNS = {"text": "window", "chat": "window", "preference": "pair", "prompt": "prompt"}


@contextmanager
def _library_errors() -> Iterator[None]:
    try:
        yield
    except (ValueError, OSError) as error:
        raise click.ClickException(str(error)) from None


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" + ("" if number == 1 else "s")


def _format_bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrai-data")
def main() -> None:
    """Prepare AstrAI training data: train a tokenizer, pack a corpus into rows, inspect them."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    # SIGTERM (from kill or a job scheduler) takes the Ctrl-C path, which stops the workers and
    # removes the temporary output instead of leaving it behind.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


skip_invalid_option = click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip and count invalid records (bad UTF-8 or JSON, missing fields, empty documents) "
    "instead of stopping at the first one.",
)
normalize_option = click.option(
    "--normalize",
    type=click.Choice(NORMALIZATIONS),
    default="none",
    show_default=True,
    help="Unicode normalisation of every string: none keeps the text exactly as stored; nfkc also "
    "turns full-width punctuation and letters into their ASCII forms.",
)


@main.command()
@click.argument("corpus_path", metavar="CORPUS", type=click.Path(exists=True, path_type=Path))
@click.argument("output", metavar="OUT.arrow", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--tokenizer",
    "tokenizer_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SentencePiece .model file, as written by 'astrai-data tokenizer train'.",
)
@click.option(
    "--seq-len",
    default=512,
    show_default=True,
    type=click.IntRange(min=1),
    help="Model context length in tokens; each stored window has seq-len + 1 tokens.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", *RECORD_KINDS]),
    default="auto",
    show_default=True,
    help="Records to pack: text documents, chat conversations, preference pairs, or prompts with "
    "reference answers; auto detects the kind from the files and fails if the corpus mixes kinds.",
)
@click.option(
    "--too-long",
    type=click.Choice(TOO_LONG_POLICIES),
    default="truncate",
    show_default=True,
    help="Conversations, pairs and prompts longer than a window: truncate shortens the prompt side "
    "first (down to half a window), then the response; drop leaves them out. Text documents "
    "continue in the next window instead.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Tokenizer processes; 1 tokenizes in the main process.  [default: number of CPUs]",
)
@normalize_option
@skip_invalid_option
def pack(
    corpus_path: Path,
    output: Path,
    tokenizer_path: Path,
    seq_len: int,
    kind: str,
    too_long: str,
    workers: int | None,
    normalize: str,
    skip_invalid: bool,
) -> None:
    """Tokenize CORPUS and write its rows to OUT.arrow.

    CORPUS is a folder, searched recursively, of .txt files (one document each) and .jsonl files
    (one {"text": ...}, {"messages": [...]}, {"prompt", "chosen", "rejected"} or
    {"prompt", "answer"} record per line), or a single such file. For prompts, --seq-len is the
    maximum prompt length.
    """
    with _library_errors():
        tokenizer = Tokenizer(tokenizer_path)
        corpus = Corpus(corpus_path, kind=kind, skip_invalid=skip_invalid, normalize=normalize)
        click.echo(
            f"packing {corpus.kind} records ({'detected' if corpus.detected else '--kind'}) from "
            f"{corpus_path}: {_count(len(corpus.files), 'file')}, {_format_bytes(corpus.total_bytes)}",
            err=True,
        )
        if corpus.left_out:
            click.echo(f"leaving out {_count(len(corpus.left_out), 'file')} of other kinds", err=True)
        with click.progressbar(length=corpus.total_bytes, label="tokenizing", file=sys.stderr) as bar:
            stats = pack_corpus(
                corpus,
                tokenizer,
                output,
                seq_len=seq_len,
                workers=workers,
                too_long=too_long,
                on_progress=bar.update,
            )
    _echo_table(_pack_summary(stats, detected=corpus.detected))


def _pack_summary(stats: PackStats, detected: bool) -> list[tuple[str, str]]:
    if stats.kind == "preference":
        rows = f"{_count(stats.windows, 'pair')} of 2 x {stats.seq_len + 1} tokens"
    elif stats.kind == "prompt":
        rows = f"{_count(stats.windows, 'prompt')} of at most {stats.seq_len} tokens"
    else:
        rows = f"{stats.windows:,} of {stats.seq_len + 1} tokens"
    return [
        ("output", str(stats.output)),
        ("kind", f"{stats.kind} ({'detected' if detected else '--kind'})"),
        ("documents", f"{stats.documents:,}"),
        ("windows", rows),
        (
            "tokens",
            f"{stats.tokens_in:,} in = {stats.tokens:,} stored + {stats.truncated_tokens:,} truncated "
            f"+ {stats.dropped_tokens:,} dropped",
        ),
        ("skipped", f"{stats.skipped:,}"),
        ("truncated", f"{stats.truncated:,}"),
        ("dropped", f"{stats.dropped:,}"),
        ("too_long", stats.too_long),
        ("normalize", stats.normalize),
        ("bytes", f"{stats.output_bytes:,} ({_format_bytes(stats.output_bytes)})"),
        ("seconds", f"{stats.seconds:.2f}"),
        ("tokens/s", f"{stats.tokens_per_second:,.0f}"),
    ]


@main.group("tokenizer")
def tokenizer_group() -> None:
    """Train the SentencePiece tokenizer."""


@tokenizer_group.command("train")
@click.argument("corpus_path", metavar="CORPUS", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the SentencePiece .model file.",
)
@click.option(
    "--vocab-size",
    default=8192,
    show_default=True,
    type=click.IntRange(min=300),
    help="Number of tokens, including the 256 byte tokens and the special tokens.",
)
@click.option(
    "--max-sentences",
    default=300_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Lines sampled from the corpus for training; bounds training time and memory.",
)
@normalize_option
@skip_invalid_option
def train(
    corpus_path: Path, output: Path, vocab_size: int, max_sentences: int, normalize: str, skip_invalid: bool
) -> None:
    """Train a BPE tokenizer on every text in CORPUS and report its compression per language.

    Training uses the .txt documents, the text of .jsonl text records, the content of every message
    (chats, prompts, chosen and rejected responses) and reference answers. The report gives characters per token on Chinese and on English documents. A Chinese
    character carries more than an English letter, so Chinese has fewer characters per token even
    with a good vocabulary. Below 1.0 for Chinese means many characters fall back to their UTF-8 bytes.
    """
    started = time.perf_counter()
    with _library_errors():
        corpus = Corpus(corpus_path, kind="any", skip_invalid=skip_invalid, normalize=normalize)
        click.echo(
            f"training a {vocab_size:,}-token tokenizer on {corpus_path}: "
            f"{_count(len(corpus.files), 'file')}, {_format_bytes(corpus.total_bytes)}",
            err=True,
        )
        tokenizer = train_tokenizer(corpus, output, vocab_size=vocab_size, max_sentences=max_sentences)
        click.echo("measuring characters per token", err=True)
        compression = measure_compression(tokenizer, corpus)
    seconds = time.perf_counter() - started

    click.echo(
        f"wrote {output} ({_format_bytes(output.stat().st_size)}, vocab {tokenizer.vocab_size:,}) "
        f"in {seconds:.1f} s"
    )
    if corpus.skipped:
        click.echo(f"skipped {_count(corpus.skipped, 'invalid record')}")
    rows = [("language", "documents", "chars/token")]
    for result in compression.values():
        measured = (
            "" if result.measured_documents == result.documents else f" (on {result.measured_documents:,})"
        )
        ratio = "no documents" if result.chars_per_token is None else f"{result.chars_per_token:.2f}"
        rows.append((result.language, f"{result.documents:,}{measured}", ratio))
    _echo_table(rows)


@main.command()
@click.argument("file", metavar="FILE.arrow", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--show",
    type=int,
    default=None,
    metavar="N",
    help=f"Also print record N (a window, pair or prompt) decoded, with the tokens of loss mask 0 "
    f"between {MASK_OPEN} and {MASK_CLOSE} (needs --tokenizer).",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The tokenizer the file was packed with; checked against the file's fingerprint, and needed "
    "to measure the share of each language.",
)
@click.option(
    "--sample-rows",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Rows, spread evenly over the file, decoded to measure the share of each language.",
)
def inspect(file: Path, show: int | None, tokenizer_path: Path | None, sample_rows: int) -> None:
    """Print the counts of a packed FILE.arrow, its mask coverage and languages, and optionally one record."""
    if show is not None and tokenizer_path is None:
        raise click.UsageError("--show needs --tokenizer TOK.model to decode the record")
    with _library_errors():
        dataset = open_dataset(file)
        tokenizer = Tokenizer(tokenizer_path) if tokenizer_path is not None else None
        if tokenizer is not None:
            dataset.check_tokenizer(tokenizer)
    noun = ROW_NOUNS[dataset.kind]
    if show is not None and not 0 <= show < len(dataset):
        raise click.BadParameter(
            f"{noun} {show} is out of range; the file has {_count(len(dataset), noun)} (0 to {len(dataset) - 1})",
            param_hint="--show",
        )

    metadata, counts = dataset.metadata, dataset.metadata["counts"]
    report = inspect_pack(dataset, tokenizer, sample_rows=sample_rows)
    rows = [
        ("file", str(file)),
        ("kind", metadata["kind"]),
        ("seq_len", str(metadata["seq_len"])),
        ("vocab_size", f"{metadata['vocab_size']:,}"),
        ("tokenizer", metadata["tokenizer_sha256"][:16] + (" (matches)" if tokenizer is not None else "")),
        ("too_long", metadata["too_long"]),
        ("normalize", metadata["normalize"]),
        ("astrai-data", metadata["astrai_data_version"]),
        ("documents", f"{counts['documents']:,}"),
        ("windows", f"{_count(counts['windows'], noun)}"),
        ("tokens_in", f"{counts['tokens_in']:,}"),
        ("tokens", f"{counts['tokens']:,} stored"),
        ("truncated", f"{_count(counts['truncated'], 'record')}, {_count(counts['truncated_tokens'], 'token')}"),
        ("dropped", f"{_count(counts['dropped'], 'record')}, {_count(counts['dropped_tokens'], 'token')}"),
        ("skipped", f"{_count(counts['skipped'], 'invalid record')}"),
        ("coverage", f"{report.mask_coverage:.1%} of stored tokens are training targets"),
        ("padding", f"{report.padding_share:.1%} of token positions"),
        ("languages", _language_line(report.language_shares(), report.sampled_rows, len(dataset), noun)),
    ]
    _echo_table(rows)

    if show is not None and tokenizer is not None:
        click.echo(f"\n{noun} {show} ({MASK_OPEN}...{MASK_CLOSE}: loss mask 0, not trained on):")
        click.echo(_render_record(tokenizer, dataset.kind, dataset.row(show)))


def _language_line(shares: dict[str, float] | None, sampled: int, total: int, noun: str) -> str:
    if shares is None:
        return "pass --tokenizer to measure"
    measured = ", ".join(f"{language} {share:.1%}" for language, share in shares.items())
    return f"{measured} of tokens (on {sampled:,} of {_count(total, noun)})"


def _render_record(tokenizer: Tokenizer, kind: str, row: dict) -> str:
    if kind in ("text", "chat"):
        return _render_window(tokenizer, row["input_ids"].tolist(), row["loss_mask"].tolist())
    if kind == "preference":
        chosen = _render_window(tokenizer, row["chosen_ids"].tolist(), row["chosen_mask"].tolist())
        rejected = _render_window(tokenizer, row["rejected_ids"].tolist(), row["rejected_mask"].tolist())
        return f"chosen:\n{chosen}\nrejected:\n{rejected}"
    prompt = _render_window(tokenizer, row["prompt_ids"].tolist(), [0] * len(row["prompt_ids"]))
    answer = "(none)" if row["answer"] is None else row["answer"]
    return f"{prompt}\nanswer: {answer}"


def _echo_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)] + [row[-1]]
        click.echo("  ".join(cells))


def _render_window(tokenizer: Tokenizer, ids: list[int], loss_mask: list[int]) -> str:
    """Decode a window, putting each run of loss-mask-0 tokens between the mask brackets."""
    parts = []
    for masked_out, run in groupby(zip(ids, loss_mask, strict=True), key=lambda pair: pair[1] == 0):
        text = _decode_visible(tokenizer, [token_id for token_id, _ in run])
        parts.append(f"{MASK_OPEN}{text}{MASK_CLOSE}" if masked_out else text)
    return "".join(parts)


def _decode_visible(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Decode ids like ``Tokenizer.decode`` but show special tokens, which it drops, by their piece.

    A repeated special token (padding) is shown once with a count, e.g. ``<pad>×37``.
    """
    special = {
        tokenizer.bos_id,
        tokenizer.eos_id,
        tokenizer.pad_id,
        tokenizer.im_start_id,
        tokenizer.im_end_id,
    }
    parts = []
    for is_special, run in groupby(ids, key=lambda token_id: token_id in special):
        if not is_special:
            parts.append(tokenizer.decode(list(run)))
            continue
        for token_id, repeats in groupby(run):
            count = len(list(repeats))
            piece = tokenizer.id_to_piece(token_id)
            parts.append(piece if count == 1 else f"{piece}×{count}")
    return "".join(parts)


if __name__ == "__main__":
    main()
