import pytest

from astrai_infer._stop import StopStringText


def push_all(tokenizer, text: str, stop) -> tuple[list[str], StopStringText]:
    matcher = StopStringText(tokenizer, stop)
    pieces = [matcher.push(token_id) for token_id in tokenizer.encode(text)]
    pieces.append(matcher.finish())
    return pieces, matcher


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("The quick brown fox jumps", ["brown"], "The quick "),
        ("今天天气很好，我们去公园散步吧。", ["公园"], "今天天气很好，我们去"),
        ("你好，世界！很高兴见到你。😀 done", ["😀"], "你好，世界！很高兴见到你。"),
        ("Mixed text: 我们 like 编程", ["like 编", "zzz"], "Mixed text: 我们 "),
        ("no stop here", ["zzz"], "no stop here"),
        ("ends with a partial st", ["stop"], "ends with a partial st"),
    ],
)
def test_text_stops_before_the_stop_string(tokenizer, text, stop, expected):
    pieces, matcher = push_all(tokenizer, text, stop)
    assert "".join(pieces) == expected
    assert matcher.text == expected
    assert matcher.stopped == (expected != text)


def test_stop_string_split_across_tokens_is_never_shown(tokenizer):
    text = "The weather is nice, let's go for a walk in the park."
    ids = tokenizer.encode(text)
    assert len(tokenizer.encode("go for a walk")) > 1  # the stop string spans several tokens
    matcher = StopStringText(tokenizer, ["go for a walk"])
    shown = ""
    for token_id in ids:
        shown += matcher.push(token_id)
        assert "go for" not in shown  # not even the first part leaks before the match is known
    assert shown == "The weather is nice, let's "


def test_earliest_of_several_stop_strings_wins(tokenizer):
    pieces, _ = push_all(tokenizer, "A small model learns to write", ["write", "model"])
    assert "".join(pieces) == "A small "
