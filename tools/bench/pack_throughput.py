"""Compare the token rate of ``pack_corpus`` with SentencePiece's own multi-threaded encoding.

Both sides tokenize the same documents with the same tokenizer and the same number of parallel
workers. SentencePiece gets the texts already in memory and only encodes them
(``SentencePieceProcessor.encode(texts, num_threads=N)``). The pack reads the files, tokenizes in N
worker processes, cuts windows and writes the Arrow file. Both rates divide the same
SentencePiece token count (no bos/eos) by the wall time. The two are measured alternately, in
rounds, so that noise from other processes hits both alike. The medians and their ratio are
printed last.

    OMP_WAIT_POLICY=PASSIVE python tools/bench/pack_throughput.py --corpus ../shared/corpus/pretrain
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from astrai_core import Tokenizer
from astrai_data import Corpus, pack_corpus, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "pretrain",
                        help="folder of .txt documents (default: ../shared/corpus/pretrain)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="SentencePiece model; default: train an 8192-token one on the corpus first")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes for the pack and threads for SentencePiece (default: CPUs)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default: 5)")
    parser.add_argument("--seq-len", type=int, default=512, help="window length of the pack (default: 512)")
    return parser.parse_args(argv)


def time_sentencepiece(tokenizer: Tokenizer, texts: list[str], threads: int) -> tuple[float, int]:
    started = time.perf_counter()
    encoded = tokenizer.sp.encode(texts, num_threads=threads)
    return time.perf_counter() - started, sum(len(ids) for ids in encoded)


def time_pack(corpus: Corpus, tokenizer: Tokenizer, workers: int, seq_len: int, scratch: Path) -> tuple[float, int]:
    output = scratch / "bench.arrow"
    started = time.perf_counter()
    stats = pack_corpus(corpus, tokenizer, output, seq_len=seq_len, workers=workers)
    seconds = time.perf_counter() - started
    output.unlink()
    return seconds, stats.tokens_in - 2 * stats.documents  # without the bos/eos pack adds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: set OMP_WAIT_POLICY=PASSIVE so idle torch threads do not spin", file=sys.stderr)
    corpus = Corpus(args.corpus, kind="text")
    texts = [record.text for record in corpus]

    with tempfile.TemporaryDirectory(prefix="astrai-bench-") as tmp:
        scratch = Path(tmp)
        if args.tokenizer is None:
            print("training an 8192-token tokenizer on the corpus ...", file=sys.stderr)
            tokenizer = train_tokenizer(corpus, scratch / "tok.model", vocab_size=8192)
        else:
            tokenizer = Tokenizer(args.tokenizer)

        print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        print(f"corpus     {args.corpus}: {len(texts):,} documents, "
              f"{sum(len(text.encode()) for text in texts) / 2**20:.1f} MiB")
        print(f"workers    {args.workers} (SentencePiece threads and pack processes)")
        print()
        print("round  sentencepiece tok/s  pack tok/s  pack/sp")
        sp_rates, pack_rates = [], []
        for round_index in range(args.rounds):
            # Alternate which side goes first, so drift in machine load does not favour one.
            order = ("sp", "pack") if round_index % 2 == 0 else ("pack", "sp")
            rates = {}
            for side in order:
                if side == "sp":
                    seconds, tokens = time_sentencepiece(tokenizer, texts, args.workers)
                else:
                    seconds, tokens = time_pack(corpus, tokenizer, args.workers, args.seq_len, scratch)
                rates[side] = tokens / seconds
            sp_rates.append(rates["sp"])
            pack_rates.append(rates["pack"])
            print(f"{round_index + 1:<5}  {rates['sp']:>19,.0f}  {rates['pack']:>10,.0f}  {rates['pack'] / rates['sp']:>7.1%}")

    sp_median, pack_median = statistics.median(sp_rates), statistics.median(pack_rates)
    print(f"median {sp_median:>19,.0f}  {pack_median:>10,.0f}  {pack_median / sp_median:>7.1%}")
    print(f"tokens per run: {tokens:,}")


if __name__ == "__main__":
    main()
