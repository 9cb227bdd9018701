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
    assert f"packing text records (detected) from {text_corpus}: 6 files" in result.stderr
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

    assert_one_line_error(mixed, "pass --kind chat or --kind text")
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
    assert "packing chat records (--kind)" in result.stderr
    assert "leaving out 6 files of other kinds" in result.stderr
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


def test_pack_summary_accounts_for_every_token(
    tmp_path: Path, tokenizer_path: Path, write_jsonl: Callable, conversation: Callable
) -> None:
    long = conversation(("user", "The river runs past the mill. " * 10), ("assistant", "Yes."))
    path = write_jsonl(tmp_path / "chat.jsonl", [long, conversation(("user", "Hi"), ("assistant", "Hello."))])

    truncate = run("pack", path, tmp_path / "t.arrow", "--tokenizer", tokenizer_path, "--seq-len", "40")
    drop = run(
        "pack", path, tmp_path / "d.arrow", "--tokenizer", tokenizer_path, "--seq-len", "40", "--too-long", "drop"
    )

    assert truncate.exit_code == 0, truncate.output
    assert drop.exit_code == 0, drop.output
    for result, policy in ((truncate, "truncate"), (drop, "drop")):
        fields = summary(result)
        numbers = [int(word.replace(",", "")) for word in fields["tokens"].split() if word[0].isdigit()]
        tokens_in, stored, truncated, dropped = numbers
        assert tokens_in == stored + truncated + dropped
        assert fields["too_long"] == policy
    assert summary(truncate)["truncated"] == "1"
    assert summary(drop)["dropped"] == "1"


def test_pack_and_inspect_preference_pairs(tmp_path: Path, tokenizer_path: Path, write_jsonl: Callable) -> None:
    pairs = [
        {"prompt": "Where does the cat sleep?", "chosen": "On the windowsill.", "rejected": "小猫睡在河里。"},
        {"prompt": "你好", "chosen": "你好！", "rejected": "Go away."},
    ]
    write_jsonl(tmp_path / "dpo.jsonl", pairs)

    packed = run("pack", tmp_path / "dpo.jsonl", tmp_path / "dpo.arrow", "--tokenizer", tokenizer_path, "--seq-len", "64")
    result = run("inspect", tmp_path / "dpo.arrow", "--show", "1", "--tokenizer", tokenizer_path)

    assert packed.exit_code == 0, packed.output
    assert summary(packed)["kind"] == "preference (detected)"
    assert summary(packed)["windows"] == "2 pairs of 2 x 65 tokens"
    assert result.exit_code == 0, result.output
    fields = summary(result)
    assert fields["windows"] == "2 pairs"
    assert fields["languages"].endswith("of tokens (on 2 of 2 pairs)")
    assert "⟦<s><|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n⟧你好！<|im_end|>⟦" in result.stdout
    assert "⟧Go away.<|im_end|>⟦" in result.stdout


def test_inspect_reports_coverage_languages_and_prompts(
    tmp_path: Path, tokenizer_path: Path, write_jsonl: Callable, conversation: Callable
) -> None:
    write_jsonl(tmp_path / "chat.jsonl", [conversation(("user", "你好吗？"), ("assistant", "我很好。"))])
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Two and two?", "answer": "4"}])
    for name in ("chat", "prompts"):
        run("pack", tmp_path / f"{name}.jsonl", tmp_path / f"{name}.arrow", "--tokenizer", tokenizer_path, "--seq-len", "40")

    chat = run("inspect", tmp_path / "chat.arrow", "--tokenizer", tokenizer_path)
    no_tokenizer = run("inspect", tmp_path / "chat.arrow")
    prompts = run("inspect", tmp_path / "prompts.arrow", "--show", "0", "--tokenizer", tokenizer_path)

    assert chat.exit_code == 0, chat.output
    fields = summary(chat)
    coverage = float(fields["coverage"].split("%")[0])
    assert 0 < coverage < 100
    assert float(fields["padding"].split("%")[0]) > 0
    assert fields["languages"].startswith("zh 100.0%, en 0.0% of tokens")
    assert summary(no_tokenizer)["languages"] == "pass --tokenizer to measure"
    assert prompts.exit_code == 0, prompts.output
    assert summary(prompts)["coverage"].startswith("0.0%")
    assert "⟦<s><|im_start|>user\nTwo and two?<|im_end|>\n<|im_start|>assistant\n⟧\nanswer: 4" in prompts.stdout


def test_pack_normalize_option(tmp_path: Path, tokenizer_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "doc.txt").write_text("全角：ＡＢＣ，“引号”。\n", encoding="utf-8")

    kept = run("pack", tmp_path / "corpus", tmp_path / "kept.arrow", "--tokenizer", tokenizer_path)
    folded = run(
        "pack", tmp_path / "corpus", tmp_path / "nfkc.arrow", "--tokenizer", tokenizer_path, "--normalize", "nfkc"
    )
    shown = {
        name: run("inspect", tmp_path / f"{name}.arrow", "--show", "0", "--tokenizer", tokenizer_path).stdout
        for name in ("kept", "nfkc")
    }

    assert summary(kept)["normalize"] == "none"
    assert summary(folded)["normalize"] == "nfkc"
    assert "<s>全角：ＡＢＣ，“引号”。\n</s>" in shown["kept"]
    assert "<s>全角:ABC,“引号”。\n</s>" in shown["nfkc"]
