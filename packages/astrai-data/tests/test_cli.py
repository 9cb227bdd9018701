"""The astrai-data command line, run in-process with click's CliRunner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from astrai_core import Tokenizer
from astrai_data.cli import main
from click.testing import CliRunner, Result


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


def summary(result: Result) -> dict[str, str]:
    """Parse the ``name  value`` lines that pack and inspect print before any blank line."""
    table = result.stdout.split("\n\n", 1)[0]
    return dict(line.split(None, 1) for line in table.splitlines())


def assert_one_line_error(result: Result, message: str) -> None:
    """Check for exit code 1 and an ``Error: ...`` line after the progress lines, without a traceback."""
    last_line = result.stderr.splitlines()[-1]
    assert result.exit_code == 1
    assert last_line.startswith("Error: ")
    assert message in last_line
    assert "Traceback" not in result.stderr


@pytest.fixture
def text_corpus(tmp_path: Path, documents: list[str], write_text_corpus: Callable) -> Path:
    return write_text_corpus(tmp_path / "corpus", documents)


def test_pack_prints_summary(tmp_path: Path, text_corpus: Path, tokenizer_path: Path) -> None:
    result = run(
        "pack",
        text_corpus,
        tmp_path / "out.arrow",
        "--tokenizer",
        tokenizer_path,
        "--seq-len",
        "16",
        "--workers",
        "2",
    )

    assert result.exit_code == 0, result.output
    assert f"packing text records from {text_corpus}: 6 files" in result.stderr
    fields = summary(result)
    assert fields["documents"] == "6"
    assert fields["windows"].endswith("of 17 tokens")
    assert fields["skipped"] == "0"
    assert int(fields["bytes"].split()[0].replace(",", "")) == (tmp_path / "out.arrow").stat().st_size
    assert {"tokens", "truncated", "dropped", "seconds", "tokens/s"} <= fields.keys()


def test_inspect_shows_counts_and_window(
    tmp_path: Path, text_corpus: Path, tokenizer_path: Path, documents: list[str]
) -> None:
    run("pack", text_corpus, tmp_path / "out.arrow", "--tokenizer", tokenizer_path, "--seq-len", "512")

    result = run("inspect", tmp_path / "out.arrow", "--show", "0", "--tokenizer", tokenizer_path)

    assert result.exit_code == 0, result.output
    assert "(matches)" in summary(result)["tokenizer"]
    assert summary(result)["documents"] == "6"
    assert "<s>" + documents[0] + "</s><s>" + documents[1] + "</s>" in result.stdout
    assert "⟦<pad>×" in result.stdout


def test_inspect_marks_masked_chat_tokens(
    tmp_path: Path, tokenizer_path: Path, write_jsonl: Callable, conversation: Callable
) -> None:
    path = write_jsonl(
        tmp_path / "chat.jsonl", [conversation(("user", "你好"), ("assistant", "Hello there."))]
    )
    run("pack", path, tmp_path / "chat.arrow", "--tokenizer", tokenizer_path, "--seq-len", "64")

    result = run("inspect", tmp_path / "chat.arrow", "--show", "0", "--tokenizer", tokenizer_path)

    assert result.exit_code == 0, result.output
    prompt = "⟦<s><|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n⟧"
    assert prompt + "Hello there.<|im_end|>⟦\n<pad>×" in result.stdout


def test_inspect_option_errors(
    tmp_path: Path, text_corpus: Path, tokenizer_path: Path, other_tokenizer: Tokenizer
) -> None:
    run("pack", text_corpus, tmp_path / "out.arrow", "--tokenizer", tokenizer_path)
    other_tokenizer.save(tmp_path / "other.model")

    without_tokenizer = run("inspect", tmp_path / "out.arrow", "--show", "0")
    out_of_range = run("inspect", tmp_path / "out.arrow", "--show", "99", "--tokenizer", tokenizer_path)
    mismatch = run("inspect", tmp_path / "out.arrow", "--tokenizer", tmp_path / "other.model")

    assert without_tokenizer.exit_code == 2
    assert "--show needs --tokenizer" in without_tokenizer.stderr
    assert out_of_range.exit_code == 2
    assert "window 99 is out of range; the file has 1 window " in out_of_range.stderr
    assert_one_line_error(mismatch, "was packed with another tokenizer")


def test_library_errors_are_one_line(
    tmp_path: Path, text_corpus: Path, tokenizer_path: Path, conversations: list[dict], write_jsonl: Callable
) -> None:
    write_jsonl(tmp_path / "corpus" / "sft.jsonl", conversations)
    write_jsonl(tmp_path / "bad" / "chat.jsonl", [conversations[0], b"{oops"])
    (tmp_path / "plain.arrow").write_text("not arrow")

    mixed = run("pack", text_corpus, tmp_path / "out.arrow", "--tokenizer", tokenizer_path)
    invalid = run("pack", tmp_path / "bad", tmp_path / "out.arrow", "--tokenizer", tokenizer_path)
    not_packed = run("inspect", tmp_path / "plain.arrow")

    assert_one_line_error(mixed, "pass --kind text or --kind chat")
    assert_one_line_error(invalid, "chat.jsonl:2: invalid JSON")
    assert_one_line_error(not_packed, "plain.arrow is not an Arrow IPC file")
    assert not (tmp_path / "out.arrow").exists()


def test_pack_kind_and_skip_invalid(
    tmp_path: Path,
    text_corpus: Path,
    tokenizer_path: Path,
    conversations: list[dict],
    write_jsonl: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_jsonl(text_corpus / "sft.jsonl", [*conversations, b"{oops", {"messages": []}])

    result = run(
        "pack",
        text_corpus,
        tmp_path / "chat.arrow",
        "--tokenizer",
        tokenizer_path,
        "--kind",
        "chat",
        "--skip-invalid",
        "--workers",
        "1",
    )

    assert result.exit_code == 0, result.output
    assert "leaving out 6 files of the other kind" in result.stderr
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "sft.jsonl:5: invalid JSON" in warnings[0]
    assert summary(result)["skipped"] == "2"
    assert summary(result)["documents"] == str(len(conversations))


def test_pack_rejects_bad_options(tmp_path: Path, text_corpus: Path, tokenizer_path: Path) -> None:
    no_tokenizer = run("pack", text_corpus, tmp_path / "out.arrow")
    zero_workers = run(
        "pack", text_corpus, tmp_path / "out.arrow", "--tokenizer", tokenizer_path, "--workers", "0"
    )
    bad_kind = run(
        "pack", text_corpus, tmp_path / "out.arrow", "--tokenizer", tokenizer_path, "--kind", "dpo"
    )

    assert no_tokenizer.exit_code == 2
    assert "Missing option '--tokenizer'" in no_tokenizer.stderr
    assert zero_workers.exit_code == 2
    assert bad_kind.exit_code == 2


def test_tokenizer_train_reports_both_languages(
    tmp_path: Path, text_corpus: Path, conversations: list[dict], write_jsonl: Callable
) -> None:
    write_jsonl(text_corpus / "sft.jsonl", conversations)

    result = run("tokenizer", "train", text_corpus, "-o", tmp_path / "tok.model", "--vocab-size", "480")

    assert result.exit_code == 0, result.output
    assert Tokenizer(tmp_path / "tok.model").vocab_size == 480
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["zh"][1] == "5"
    assert rows["en"][1] == "5"
    assert float(rows["zh"][2]) > 0
    assert float(rows["en"][2]) > float(rows["zh"][2])


def test_tokenizer_train_bad_vocab_size(tmp_path: Path, text_corpus: Path) -> None:
    too_small = run("tokenizer", "train", text_corpus, "-o", tmp_path / "tok.model", "--vocab-size", "100")
    too_large = run("tokenizer", "train", text_corpus, "-o", tmp_path / "tok.model", "--vocab-size", "30000")

    assert too_small.exit_code == 2
    assert_one_line_error(too_large, "Vocabulary size too high")
