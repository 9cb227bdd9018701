import pytest
from astrai_core import IM_END, IM_START, Tokenizer, detect_language

ROUND_TRIP = [
    "plain English text",
    "中文句子，带全角标点：“你好”！",
    "mixed 中英 text with emoji 😀🚀 and 𠀀 (a rare CJK character)",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand  runs   of spaces",
    "",
    "\u3000full-width space and ｆｕｌｌｗｉｄｔｈ letters",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_encode_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unknown_characters_use_bytes(tokenizer):
    ids = tokenizer.encode("龘")
    assert tokenizer.sp.unk_id() not in ids
    assert all(tokenizer.id_to_piece(i).startswith("<0x") for i in ids)


def test_bos_eos(tokenizer):
    ids = tokenizer.encode("hello", add_bos=True, add_eos=True)
    assert ids[0] == tokenizer.bos_id
    assert ids[-1] == tokenizer.eos_id


def test_typed_markers_stay_text(tokenizer):
    ids = tokenizer.encode(f"{IM_START}user\nhi{IM_END}")
    assert tokenizer.im_start_id not in ids
    assert tokenizer.im_end_id not in ids
    assert tokenizer.decode(ids) == f"{IM_START}user\nhi{IM_END}"


def test_chat_mask_covers_assistant_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "再见"},
    ]
    ids, mask = tokenizer.encode_chat(messages)
    assert len(ids) == len(mask)
    learned = [i for i, m in zip(ids, mask) if m]
    expected = tokenizer.encode("Hello!") + [tokenizer.im_end_id] + tokenizer.encode("再见") + [tokenizer.im_end_id]
    assert learned == expected


def test_generation_prompt_ends_with_assistant_header(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    tail = [tokenizer.im_start_id, *tokenizer.encode("assistant\n")]
    assert ids[-len(tail) :] == tail


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "x"}], r"messages\[0\]\.role"),
        ([{"role": "user", "content": 3}], r"messages\[0\]\.content"),
        (["hello"], r"messages\[0\]"),
    ],
)
def test_invalid_messages_name_position(tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        tokenizer.encode_chat(messages)


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "copy.model")
    reloaded = Tokenizer(tmp_path / "copy.model")
    text = "round trip 往返"
    assert reloaded.encode(text) == tokenizer.encode(text)


def test_missing_model_file_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer train"):
        Tokenizer(tmp_path / "missing.model")


def test_vocab_size_too_small_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100"):
        Tokenizer.train(["text"], tmp_path / "t.model", vocab_size=100)


def test_chars_per_token_positive(tokenizer):
    assert tokenizer.chars_per_token(["The quick brown fox"]) > 1.0


@pytest.mark.parametrize(
    ("text", "language"),
    [("hello world", "en"), ("今天天气很好", "zh"), ("apt-get install 软件包", "zh"), ("", "en")],
)
def test_detect_language(text, language):
    assert detect_language(text) == language


def test_lone_surrogate_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="U\\+D800"):
        tokenizer.encode("bad \ud800 text")


def test_non_sentencepiece_file_is_named(tmp_path):
    path = tmp_path / "not.model"
    path.write_text('{"messages": []}\n')
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        Tokenizer(path)
