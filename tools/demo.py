"""The end-to-end demo: from Debian's documentation to a bilingual chat model on two CPU cores.

Steps, each timed and reported:
1. Get a real English/Chinese corpus: Debian documentation packages fetched with ``apt-get
   download`` and converted to text (cached), or any folder given with ``--corpus``.
2. Train a SentencePiece tokenizer and report characters per token for each language.
3. Pack the pretraining text, the held-out text and the chat pairs into Arrow files.
4. Measure a unigram model's held-out loss: the bar a language model must clear.
5. Pretrain the ``tiny`` preset, reporting held-out loss before and after.
6. Fine-tune it on the question/answer pairs (SFT).
7. Align it with DPO on preference pairs made from those answers (the answer cut to its first third
   is the rejected one), reporting held-out preference loss before and after.
8. Train it with GRPO on the questions, rewarding answers in the question's language that end
   their turn.
9. Generate answers to an English and a Chinese prompt.
10. Copy the final model to ``runs/demo/model``, which ``flask --app apps/server run`` serves.

The default step counts finish in about 9 minutes on a 2-core machine. ``--quick`` runs a smoke
test in about a minute and writes to ``runs/demo-quick``, so it leaves a trained model alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from astrai_core import Tokenizer, detect_language
from astrai_data import Corpus, PackedDataset, PackStats, measure_compression, pack_corpus, train_tokenizer
from astrai_infer import Generator
from astrai_train import TrainCallback, TrainConfig, TrainContextBuilder, Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "demo"))
from fetch_corpus import fetch_corpus  # noqa: E402

logger = logging.getLogger("demo")

PROMPTS = [
    [{"role": "user", "content": "What is Debian?"}],
    [{"role": "user", "content": "什么是 Debian？"}],
]
COMPLETIONS = ["The Python interpreter", "床前明月光，"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="folder of .txt/.jsonl files to use instead of Debian's docs")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: runs/demo, or runs/demo-quick with --quick)"
    )
    parser.add_argument("--vocab-size", type=int, default=8192, help="tokenizer vocabulary size")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training window")
    parser.add_argument("--pretrain-steps", type=int, default=600, help="pretraining optimizer steps")
    parser.add_argument("--sft-steps", type=int, default=150, help="fine-tuning optimizer steps")
    parser.add_argument("--dpo-steps", type=int, default=60, help="DPO optimizer steps")
    parser.add_argument("--grpo-steps", type=int, default=24, help="GRPO optimizer steps")
    parser.add_argument("--quick", action="store_true", help="tiny step counts: a smoke test of every stage")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.sft_steps, args.dpo_steps, args.grpo_steps = 20, 10, 4, 4
    if args.out is None:
        args.out = ROOT / "runs" / ("demo-quick" if args.quick else "demo")
    return args


class EvaluationRecorder(TrainCallback):
    """Keeps every held-out evaluation so the demo can print the first and the last."""

    def __init__(self) -> None:
        self.evaluations: list[dict] = []

    def on_evaluate(self, trainer, metrics) -> None:
        self.evaluations.append(metrics)


def build_tokenizer(corpus: Path, out: Path, vocab_size: int) -> Tokenizer:
    """Train on the pretraining text and log characters per token for each language."""
    source = corpus / "pretrain" if (corpus / "pretrain").is_dir() else corpus
    text = Corpus(source, kind="text")
    tokenizer = train_tokenizer(text, out, vocab_size=vocab_size)
    for language, result in measure_compression(tokenizer, text).items():
        if result.chars_per_token is not None:
            logger.info(
                "  %s: %d documents, %.2f characters per token", language, result.documents, result.chars_per_token
            )
    return tokenizer


def pack(source: Path, output: Path, tokenizer: Tokenizer, seq_len: int, kind: str) -> PackStats:
    stats = pack_corpus(Corpus(source, kind=kind), tokenizer, output, seq_len=seq_len)
    logger.info(
        "  %s: %d documents, %d tokens, %d windows (%d truncated, %d dropped)",
        output.name, stats.documents, stats.tokens, stats.windows, stats.truncated, stats.dropped,
    )
    return stats


def unigram_loss(train: PackedDataset, val: PackedDataset, vocab_size: int) -> float:
    """Held-out cross-entropy (nats per token) of add-one-smoothed unigram frequencies from ``train``."""
    counts = np.zeros(vocab_size, dtype=np.float64)
    for index in range(len(train)):
        labels = train[index]["labels"].numpy()
        counts += np.bincount(labels[labels >= 0], minlength=vocab_size)
    log_probs = np.log((counts + 1) / (counts.sum() + vocab_size))
    total, n = 0.0, 0
    for index in range(len(val)):
        labels = val[index]["labels"].numpy()
        labels = labels[labels >= 0]
        total -= log_probs[labels].sum()
        n += len(labels)
    return total / max(n, 1)


def make_preference_records(sft_file: Path, output: Path) -> None:
    """Write DPO pairs from chat pairs: the real answer is chosen, and its first third, cut at a
    space or punctuation mark, is rejected, so the pair teaches "finish the answer"."""
    with open(output, "w", encoding="utf-8") as handle:
        for line in sft_file.read_text(encoding="utf-8").splitlines():
            if not line:
                continue
            messages = json.loads(line)["messages"]
            question, answer = messages[0]["content"], messages[-1]["content"]
            cut = len(answer) // 3
            while cut > 0 and not (answer[cut - 1].isspace() or answer[cut - 1] in ".,;:!?。，；：！？"):
                cut -= 1
            if cut >= 20:
                record = {"prompt": question, "chosen": answer, "rejected": answer[:cut].rstrip()}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def make_prompt_records(sft_file: Path, output: Path) -> None:
    """Write GRPO prompts: the chat questions, without answers."""
    with open(output, "w", encoding="utf-8") as handle:
        for line in sft_file.read_text(encoding="utf-8").splitlines():
            if line:
                question = json.loads(line)["messages"][0]["content"]
                handle.write(json.dumps({"prompt": question}, ensure_ascii=False) + "\n")


class RewardRecorder(TrainCallback):
    """Keeps the mean reward of every GRPO step."""

    def __init__(self) -> None:
        self.rewards: list[float] = []

    def on_step_end(self, trainer, metrics) -> None:
        self.rewards.append(metrics["reward_mean"])


def run_grpo(config: TrainConfig) -> tuple[float, float]:
    """Train with GRPO; return the mean reward of the first and of the last quarter of the steps."""
    recorder = RewardRecorder()
    trainer = fresh_trainer(config)
    trainer.callbacks.append(recorder)
    trainer.train()
    quarter = max(len(recorder.rewards) // 4, 1)
    return sum(recorder.rewards[:quarter]) / quarter, sum(recorder.rewards[-quarter:]) / quarter


def fresh_trainer(config: TrainConfig) -> Trainer:
    """Build a trainer that starts over, because the demo retrains every stage instead of resuming."""
    shutil.rmtree(config.out_dir, ignore_errors=True)
    return Trainer(config, builder=TrainContextBuilder(config, resume=False))


def check_corpus(corpus: Path) -> None:
    """Fail early, naming what is missing, when a --corpus folder lacks the demo's layout."""
    required = [corpus / "pretrain", corpus / "heldout", corpus / "sft.jsonl", corpus / "heldout" / "sft.jsonl"]
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        raise SystemExit(
            f"error: the corpus folder {corpus} lacks {', '.join(missing)}. The demo expects pretrain/**/*.txt, "
            "heldout/**/*.txt, sft.jsonl and heldout/sft.jsonl (chat records); run without --corpus to "
            "build such a folder from Debian's documentation"
        )


def run_training(config: TrainConfig) -> tuple[float, float]:
    recorder = EvaluationRecorder()
    trainer = fresh_trainer(config)
    trainer.callbacks.append(recorder)
    trainer.train()
    return recorder.evaluations[0]["val_loss"], recorder.evaluations[-1]["val_loss"]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    out: Path = args.out
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    results: dict[str, object] = {}

    def stage(name: str):
        logger.info("\n== %s ==", name)
        timings[name] = time.perf_counter()

    def done(name: str) -> None:
        timings[name] = time.perf_counter() - timings[name]
        logger.info("(%s took %.0f s)", name, timings[name])

    stage("corpus")
    corpus = args.corpus.resolve() if args.corpus else fetch_corpus(log=logger.info)
    check_corpus(corpus)
    logger.info("corpus: %s", corpus)
    done("corpus")

    stage("tokenizer")
    tokenizer = build_tokenizer(corpus, data / "tokenizer.model", args.vocab_size)
    done("tokenizer")

    stage("pack")
    pack(corpus / "pretrain", data / "pretrain.arrow", tokenizer, args.seq_len, "text")
    pack(corpus / "heldout", data / "heldout.arrow", tokenizer, args.seq_len, "text")
    pack(corpus / "sft.jsonl", data / "sft.arrow", tokenizer, args.seq_len, "chat")
    pack(corpus / "heldout" / "sft.jsonl", data / "sft-heldout.arrow", tokenizer, args.seq_len, "chat")
    done("pack")

    stage("unigram baseline")
    train_set, val_set = PackedDataset(data / "pretrain.arrow"), PackedDataset(data / "heldout.arrow")
    results["unigram_loss"] = unigram_loss(train_set, val_set, tokenizer.vocab_size)
    logger.info("unigram held-out loss: %.3f nats/token", results["unigram_loss"])
    done("unigram baseline")

    stage("pretrain")
    pretrain = TrainConfig(
        dataset=str(data / "pretrain.arrow"),
        val_dataset=str(data / "heldout.arrow"),
        tokenizer=str(data / "tokenizer.model"),
        out_dir=str(out / "pretrain"),
        model="tiny",
        strategy="seq",
        optimizer={"lr": 2e-3, "weight_decay": 0.1},
        schedule={"name": "cosine", "warmup_steps": max(args.pretrain_steps // 20, 1), "min_lr_ratio": 0.1},
        batch_size=16,
        max_steps=args.pretrain_steps,
        log_interval=max(args.pretrain_steps // 20, 1),
        eval_batches=40,
    )
    results["pretrain_loss"] = run_training(pretrain)
    done("pretrain")

    stage("sft")
    sft = TrainConfig(
        dataset=str(data / "sft.arrow"),
        val_dataset=str(data / "sft-heldout.arrow"),
        init_from=str(out / "pretrain" / "final"),
        out_dir=str(out / "sft"),
        strategy="sft",
        optimizer={"lr": 5e-4, "weight_decay": 0.0},
        schedule={"name": "cosine", "warmup_steps": max(args.sft_steps // 10, 1), "min_lr_ratio": 0.1},
        batch_size=8,
        max_steps=args.sft_steps,
        log_interval=max(args.sft_steps // 10, 1),
    )
    results["sft_loss"] = run_training(sft)
    done("sft")

    stage("dpo")
    make_preference_records(corpus / "sft.jsonl", data / "preference.jsonl")
    make_preference_records(corpus / "heldout" / "sft.jsonl", data / "preference-heldout.jsonl")
    pack(data / "preference.jsonl", data / "preference.arrow", tokenizer, args.seq_len, "preference")
    pack(data / "preference-heldout.jsonl", data / "preference-heldout.arrow", tokenizer, args.seq_len, "preference")
    dpo = TrainConfig(
        dataset=str(data / "preference.arrow"),
        val_dataset=str(data / "preference-heldout.arrow"),
        init_from=str(out / "sft" / "final"),
        out_dir=str(out / "dpo"),
        strategy="dpo",
        strategy_options={"beta": 0.1},
        optimizer={"lr": 1e-4, "weight_decay": 0.0},
        schedule={"name": "constant", "warmup_steps": 5},
        batch_size=4,
        max_steps=args.dpo_steps,
        log_interval=max(args.dpo_steps // 5, 1),
        eval_batches=10,
    )
    results["dpo_loss"] = run_training(dpo)
    done("dpo")

    stage("grpo")
    make_prompt_records(corpus / "sft.jsonl", data / "prompts.jsonl")
    pack(data / "prompts.jsonl", data / "prompts.arrow", tokenizer, args.seq_len, "prompt")
    grpo = TrainConfig(
        dataset=str(data / "prompts.arrow"),
        init_from=str(out / "dpo" / "final"),
        out_dir=str(out / "grpo"),
        strategy="grpo",
        # Rewards a small model can earn: answer in the question's language and end the turn.
        strategy_options={"group_size": 4, "max_new_tokens": 48, "rewards": {"language": 1.0, "format": 1.0}},
        optimizer={"lr": 5e-5, "weight_decay": 0.0},
        schedule={"name": "constant", "warmup_steps": 2},
        batch_size=4,
        max_steps=args.grpo_steps,
        log_interval=max(args.grpo_steps // 5, 1),
    )
    results["grpo_reward"] = run_grpo(grpo)
    model_dir = out / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(out / "grpo" / "final", model_dir)
    done("grpo")

    stage("generate")
    pretrained = Generator.from_checkpoint(out / "pretrain" / "final")
    chat = Generator.from_checkpoint(model_dir)
    samples = []
    for prompt in COMPLETIONS:
        text = pretrained.generate(prompt, max_new_tokens=40, temperature=0.0)
        samples.append({"model": "pretrained", "prompt": prompt, "output": text})
    for messages in PROMPTS:
        text = chat.generate(messages, max_new_tokens=60, temperature=0.7, top_p=0.9, seed=0)
        samples.append({"model": "chat", "prompt": messages[-1]["content"], "output": text})
    for sample in samples:
        logger.info("[%s] %s\n  -> %s", sample["model"], sample["prompt"], sample["output"].strip())
    done("generate")

    report = {"timings_seconds": {k: round(v, 1) for k, v in timings.items()}, **results, "samples": samples}
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print_summary(report, model_dir)


def print_summary(report: dict, model_dir: Path) -> None:
    before, after = report["pretrain_loss"]
    sft_before, sft_after = report["sft_loss"]
    total = sum(report["timings_seconds"].values())
    print("\nAstrAI demo summary")
    print(f"  time: {total / 60:.1f} min  " + "  ".join(f"{k} {v:.0f}s" for k, v in report["timings_seconds"].items()))
    print(f"  held-out loss (nats/token): unigram {report['unigram_loss']:.3f} | before pretraining {before:.3f} "
          f"| after pretraining {after:.3f} (perplexity {math.exp(after):.1f})")
    print(f"  chat held-out loss: before SFT {sft_before:.3f} | after SFT {sft_after:.3f}")
    dpo_before, dpo_after = report["dpo_loss"]
    print(f"  DPO held-out preference loss: before {dpo_before:.3f} (ln 2 = 0.693) | after {dpo_after:.3f}")
    reward_first, reward_last = report["grpo_reward"]
    print(f"  GRPO mean reward (language + format, max 2): first quarter {reward_first:.2f} | last quarter {reward_last:.2f}")
    for sample in report["samples"]:
        print(f"  [{sample['model']}] {sample['prompt']!r} -> {sample['output'].strip()!r}")
    serve = "flask --app apps/server run"
    if model_dir.resolve() != (ROOT / "runs" / "demo" / "model").resolve():
        serve = f"ASTRAI_CHECKPOINT={model_dir} {serve}"  # the server's default is runs/demo/model
    print(f"  chat model: {model_dir}  (serve it with: {serve})")


if __name__ == "__main__":
    main()
