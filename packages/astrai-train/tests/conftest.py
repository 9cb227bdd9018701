import json

import pytest
from astrai_core import Tokenizer
from astrai_data import Corpus, pack_corpus
from astrai_train import TrainConfig

# Text written for these tests.
ENGLISH = [
    "The cat sat on the mat. The dog slept by the door. Birds sang in the tall green trees.",
    "Packages are installed with apt. Updates arrive every week. The system keeps running.",
    "A small model learns short patterns quickly when the text repeats often enough.",
]
CHINESE = [
    "春天来了，花儿开了，小鸟在树上唱歌。孩子们在公园里放风筝。",
    "软件包可以用命令安装。系统每周都会更新。电脑一直在运行。",
]
PREFERENCES = [
    {"prompt": "What is apt?", "chosen": "A package manager for Debian.", "rejected": "A kind of fruit."},
    {"prompt": "天空是什么颜色？", "chosen": "晴天时天空是蓝色的。", "rejected": "天空是绿色的。"},
]
PROMPTS = [
    {"prompt": "What is two plus two?", "answer": "4"},
    {"prompt": "三加四等于几？", "answer": "7"},
]
CHATS = [
    [{"role": "user", "content": "What is apt?"}, {"role": "assistant", "content": "A package manager."}],
    [{"role": "user", "content": "你好吗？"}, {"role": "assistant", "content": "我很好，谢谢。"}],
]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A tokenizer, a packed text set and a packed chat set, shared by the tests."""
    root = tmp_path_factory.mktemp("train")
    corpus = root / "corpus"
    corpus.mkdir()
    for index, text in enumerate(ENGLISH * 4 + CHINESE * 4):
        (corpus / f"doc{index:02d}.txt").write_text(text, encoding="utf-8")
    chat_file = root / "chat.jsonl"
    chat_file.write_text(
        "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in CHATS * 8), encoding="utf-8"
    )
    preference_file = root / "preference.jsonl"
    preference_file.write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PREFERENCES * 8), encoding="utf-8"
    )
    prompt_file = root / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PROMPTS * 4), encoding="utf-8")
    tokenizer = Tokenizer.train(ENGLISH * 10 + CHINESE * 10, root / "tok.model", vocab_size=400)
    pack_corpus(Corpus(corpus, kind="text"), tokenizer, root / "text.arrow", seq_len=32, workers=1)
    pack_corpus(Corpus(chat_file, kind="chat"), tokenizer, root / "chat.arrow", seq_len=32, workers=1)
    pack_corpus(Corpus(preference_file, kind="preference"), tokenizer, root / "preference.arrow", seq_len=32, workers=1)
    pack_corpus(Corpus(prompt_file, kind="prompt"), tokenizer, root / "prompts.arrow", seq_len=32, workers=1)
    return root


def _tiny_config(workspace, tmp_path, **overrides) -> TrainConfig:
    fields = dict(
        dataset=str(workspace / "text.arrow"),
        val_dataset=str(workspace / "text.arrow"),
        tokenizer=str(workspace / "tok.model"),
        out_dir=str(tmp_path / "run"),
        model={"preset": "tiny", "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim_ffn": 64, "max_len": 64},
        batch_size=4,
        max_steps=6,
        log_interval=2,
        eval_batches=2,
        schedule={"warmup_steps": 2},
        optimizer={"lr": 1e-2},
    )
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.fixture(scope="session")
def tiny_config():
    """Factory of small, fast training configs over the shared workspace."""
    return _tiny_config
