"""End to end on real text: tokenizer → pack → pretrain → SFT → generate → HTTP chat request.

Uses a slice of the project's bilingual test corpus (``../shared/corpus`` beside the repository)
and skips when it is absent. Every stage uses only the packages' public interfaces, the way a user
script would.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from astrai_data import Corpus, PackedDataset, pack_corpus, train_tokenizer
from astrai_infer import Generator
from astrai_server import create_app
from astrai_train import TrainCallback, TrainConfig, Trainer
from werkzeug.serving import make_server

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"test corpus not found at {CORPUS}")


class Evaluations(TrainCallback):
    def __init__(self):
        self.losses = []

    def on_evaluate(self, trainer, metrics):
        self.losses.append(metrics["val_loss"])


def slice_corpus(target: Path, files_per_language: int = 40, sft_lines: int = 60) -> Path:
    """Copy a few documents of each language and some chat pairs into ``target``."""
    for language in ("en", "zh"):
        folder = target / "pretrain" / language
        folder.mkdir(parents=True)
        for path in sorted((CORPUS / "pretrain" / language).glob("*.txt"))[:files_per_language]:
            (folder / path.name).write_bytes(path.read_bytes())
    lines = (CORPUS / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    short = [line for line in lines if len(line) < 1500][:sft_lines]
    (target / "sft.jsonl").write_text("\n".join(short) + "\n", encoding="utf-8")
    return target


def train(config: TrainConfig) -> list[float]:
    evaluations = Evaluations()
    trainer = Trainer(config)
    trainer.callbacks.append(evaluations)
    trainer.train()
    return evaluations.losses


def test_corpus_to_chat_server(tmp_path):
    corpus = slice_corpus(tmp_path / "corpus")
    data = tmp_path / "data"

    tokenizer = train_tokenizer(Corpus(corpus / "pretrain", kind="text"), data / "tok.model", vocab_size=2000)
    mixed = "Debian 软件包 — “引号” and 😀\n\tend"
    assert tokenizer.decode(tokenizer.encode(mixed)) == mixed

    text_stats = pack_corpus(Corpus(corpus / "pretrain", kind="text"), tokenizer, data / "text.arrow", seq_len=128)
    chat_stats = pack_corpus(Corpus(corpus / "sft.jsonl", kind="chat"), tokenizer, data / "chat.arrow", seq_len=128)
    assert text_stats.documents == 80
    assert chat_stats.windows > 0
    assert len(PackedDataset(data / "text.arrow")) == text_stats.windows

    model = {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim_ffn": 192, "max_len": 256}
    pretrain_losses = train(
        TrainConfig(
            dataset=str(data / "text.arrow"),
            val_dataset=str(data / "text.arrow"),
            tokenizer=str(data / "tok.model"),
            out_dir=str(tmp_path / "pretrain"),
            model=model,
            optimizer={"lr": 3e-3},
            schedule={"warmup_steps": 5},
            batch_size=8,
            max_steps=40,
            eval_batches=4,
            log_interval=10,
        )
    )
    assert pretrain_losses[-1] < pretrain_losses[0] - 1.0

    sft_losses = train(
        TrainConfig(
            dataset=str(data / "chat.arrow"),
            val_dataset=str(data / "chat.arrow"),
            init_from=str(tmp_path / "pretrain" / "final"),
            out_dir=str(tmp_path / "sft"),
            strategy="sft",
            optimizer={"lr": 1e-3},
            batch_size=4,
            max_steps=10,
            eval_batches=4,
        )
    )
    assert sft_losses[-1] < sft_losses[0]

    checkpoint = tmp_path / "sft" / "final"
    generator = Generator.from_checkpoint(checkpoint)
    messages = [{"role": "user", "content": "什么是 Debian？"}]
    text = generator.generate(messages, max_new_tokens=16, temperature=0.0)
    streamed = "".join(generator.stream_generate(messages, max_new_tokens=16, temperature=0.0))
    assert streamed == text
    assert "\ufffd" not in streamed

    app = create_app({"ASTRAI_CHECKPOINT": str(checkpoint)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = json.dumps({"messages": messages, "max_tokens": 16, "temperature": 0}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.loads(response.read().decode("utf-8"))
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert reply["choices"][0]["message"]["content"] == text
    assert reply["usage"]["completion_tokens"] >= 1
