"""Compare the memory of training from a 2 GB packed file with training from a 20 MB one.

The benchmark packs about 20 MB of windows from the corpus with ``pack_corpus``, then writes a
second file that repeats those record batches until it reaches 2 GB, with the counts in its
metadata scaled to match. Each file trains the same tiny model for the same number of steps with
the astrai-train ``Trainer``, which samples shuffled windows from the whole file. Every run is a
fresh process. At the end it reports its peak resident set size (``VmHWM``) and its anonymous and
file-backed resident memory. The two files take turns, and the medians and their difference are printed last. Both
files live in a temporary folder under /tmp that is deleted at the end.

    OMP_WAIT_POLICY=PASSIVE python tools/bench/dataset_memory.py --corpus ../shared/corpus/pretrain
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "pretrain",
                        help="folder of .txt documents (default: ../shared/corpus/pretrain)")
    parser.add_argument("--small-mib", type=float, default=20, help="size of the small file (default: 20)")
    parser.add_argument("--large-gib", type=float, default=2, help="size of the large file (default: 2)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (default: 200)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per step (default: 8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per file, alternating (default: 2)")
    parser.add_argument("--child", nargs=3, metavar=("DATASET", "TOKENIZER", "OUT_DIR"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_small_file(corpus_root: Path, folder: Path, target_bytes: float) -> tuple[Path, Path]:
    """Pack the first corpus documents (in sorted order) into about ``target_bytes`` of windows."""
    from astrai_data import Corpus, find_corpus_files, pack_corpus, train_tokenizer

    # A packed token takes 9 bytes (int32 id, uint8 mask, int32 position) and about 3 bytes of text.
    text_budget, chosen = target_bytes / 3, []
    for path in find_corpus_files(corpus_root):
        if path.suffix == ".txt" and text_budget > 0:
            chosen.append(path)
            text_budget -= path.stat().st_size
    subset = folder / "corpus"
    subset.mkdir()
    for index, path in enumerate(chosen):
        (subset / f"{index:05d}.txt").write_bytes(path.read_bytes())
    corpus = Corpus(subset, kind="text")
    tokenizer = train_tokenizer(corpus, folder / "tok.model", vocab_size=2048)
    pack_corpus(corpus, tokenizer, folder / "small.arrow", seq_len=512)
    return folder / "small.arrow", folder / "tok.model"


def make_large_file(small: Path, large: Path, target_bytes: float) -> None:
    """Write ``large`` as the record batches of ``small`` repeated until it reaches ``target_bytes``."""
    import pyarrow as pa

    repeats = max(1, round(target_bytes / small.stat().st_size))
    with pa.memory_map(str(small)) as source:
        reader = pa.ipc.open_file(source)
        metadata = json.loads(reader.schema.metadata[b"astrai_data"])
        for name, value in metadata["counts"].items():
            metadata["counts"][name] = value * repeats
        schema = reader.schema.with_metadata({b"astrai_data": json.dumps(metadata).encode()})
        batches = [reader.get_batch(index) for index in range(reader.num_record_batches)]
        with pa.OSFile(str(large), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for _ in range(repeats):
                for batch in batches:
                    writer.write_batch(batch)


def train_and_report(dataset: str, tokenizer: str, out_dir: str, steps: int, batch_size: int) -> None:
    """Child process: train, then print this process's memory as JSON."""
    import resource

    from astrai_train import Trainer, TrainConfig

    config = TrainConfig(
        dataset=dataset,
        tokenizer=tokenizer,
        out_dir=out_dir,
        model={"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "dim_ffn": 128, "max_len": 512},
        batch_size=batch_size,
        max_steps=steps,
        log_interval=steps,
        num_threads=1,
    )
    Trainer(config, callbacks=[]).train()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = {name: int(status[name].split()[0]) for name in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}
    kib["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(kib))


def measure(dataset: Path, tokenizer: Path, out_dir: Path, args: argparse.Namespace) -> dict[str, int]:
    command = [sys.executable, __file__, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--child", str(dataset), str(tokenizer), str(out_dir)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        train_and_report(*args.child, steps=args.steps, batch_size=args.batch_size)
        return
    if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: set OMP_WAIT_POLICY=PASSIVE so idle torch threads do not spin", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="astrai-bench-", dir="/tmp") as tmp:
        folder = Path(tmp)
        print("packing the small file and writing the large one ...", file=sys.stderr)
        small, tokenizer = make_small_file(args.corpus, folder, args.small_mib * MIB)
        large = folder / "large.arrow"
        make_large_file(small, large, args.large_gib * 2**30)

        print(f"machine    {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
              f"Python {platform.python_version()}")
        print(f"files      small {small.stat().st_size / MIB:,.1f} MiB, large {large.stat().st_size / MIB:,.1f} MiB")
        print(f"training   {args.steps} steps of {args.batch_size} windows of 512 tokens, tiny model, 1 thread")
        print()
        print("run  file   peak RSS MiB  RSS MiB  anon MiB  file-backed MiB")
        peaks: dict[str, list[float]] = {"small": [], "large": []}
        for round_index in range(args.rounds):
            order = ("small", "large") if round_index % 2 == 0 else ("large", "small")
            for name in order:
                dataset = small if name == "small" else large
                kib = measure(dataset, tokenizer, folder / f"run-{name}-{round_index}", args)
                peaks[name].append(kib["VmHWM"] / 1024)
                print(f"{round_index + 1:<3}  {name:<5}  {kib['VmHWM'] / 1024:>12,.1f}  {kib['VmRSS'] / 1024:>7,.1f}  "
                      f"{kib['RssAnon'] / 1024:>8,.1f}  {kib['RssFile'] / 1024:>15,.1f}")

    small_peak, large_peak = statistics.median(peaks["small"]), statistics.median(peaks["large"])
    print(f"median peak RSS: small {small_peak:,.1f} MiB, large {large_peak:,.1f} MiB, "
          f"difference {large_peak - small_peak:+,.1f} MiB")


if __name__ == "__main__":
    main()
