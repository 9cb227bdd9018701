"""Compare AstrAI's Generator with Hugging Face transformers' ``generate`` on the same weights.

For each model the script builds random weights with AstrAI, exports them with
``export_hf_checkpoint`` and loads that folder with ``AutoModelForCausalLM``, so both sides run
the same numbers with the same ``torch.set_num_threads``. Runs alternate between the two and
each figure is the best of ``--repeats`` runs, because shared CPUs are noisy.

Rows (greedy decoding, fixed token counts, no stop tokens):
- decode tokens/s at batch 1 and batch 8: new tokens after the first, over the time they took
  (time for N tokens minus the time for 1, so the prefill cancels out);
- prefill tokens/s: prompt tokens over the time to the first new token;
- with ``--bandwidth``, the ``1b`` preset in bf16 at batch 1 against the memory-bandwidth bound,
  for both libraries: a token needs every weight once, so tokens/s cannot exceed bandwidth /
  weight bytes. The bandwidth is measured here by summing a buffer much larger than the caches.

    OMP_WAIT_POLICY=PASSIVE python tools/bench/decode_speed.py [--bandwidth]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from astrai_core import ModelConfig, Transformer, export_hf_checkpoint  # noqa: E402
from astrai_infer import GenerationConfig, Generator  # noqa: E402

MODELS = {"7M": "small", "50M": "medium"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class IdTokenizer:
    """Stands in for a tokenizer when prompts are token ids: every id is valid, none stops."""

    bos_id, eos_id, pad_id = 1, 2, 3
    stop_ids = frozenset()

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def decode(self, ids) -> str:
        return ""


def random_model(preset: str, dtype: torch.dtype) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig.preset(preset)
    with torch.device("meta"):
        model = Transformer(config)
    # Random weights tensor by tensor, so the 1b preset never exists in float32.
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            data = torch.empty(param.shape, dtype=dtype).normal_(0, 0.02)
            if name == "weight" and param.dim() == 1:
                data.fill_(1.0)
            setattr(module, name, torch.nn.Parameter(data, requires_grad=False))
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_rope("cpu")
    return model.eval()


def load_hf(model: Transformer, folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    export_hf_checkpoint(model, folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(ours, theirs, prompts: torch.Tensor, new_tokens: int, repeats: int) -> tuple[float, float]:
    """Return (ours, theirs) seconds for ``new_tokens`` greedy tokens after ``prompts`` (B, P)."""
    config = GenerationConfig(temperature=0, max_new_tokens=new_tokens)
    id_lists = prompts.tolist()

    def run_ours():
        ours.complete_batch(id_lists, config)

    def run_theirs():
        with torch.inference_mode():
            theirs.generate(
                prompts,
                attention_mask=torch.ones_like(prompts),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    ours_times, theirs_times = [], []
    for _ in range(repeats):  # alternate, so drift in machine load hits both sides alike
        ours_times.append(best_time(run_ours, 1))
        theirs_times.append(best_time(run_theirs, 1))
    return min(ours_times), min(theirs_times)


def decode_rate(ours, theirs, batch: int, prompt_len: int, new_tokens: int, repeats: int, vocab: int):
    prompts = torch.randint(4, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(batch))
    long_ours, long_theirs = measure(ours, theirs, prompts, new_tokens, repeats)
    one_ours, one_theirs = measure(ours, theirs, prompts, 1, repeats)
    tokens = batch * (new_tokens - 1)
    return tokens / (long_ours - one_ours), tokens / (long_theirs - one_theirs)


def prefill_rate(ours, theirs, prompt_len: int, repeats: int, vocab: int):
    prompts = torch.randint(4, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(7))
    t_ours, t_theirs = measure(ours, theirs, prompts, 1, repeats)
    return prompt_len / t_ours, prompt_len / t_theirs


def row(label: str, ours: float, theirs: float, unit: str = "tok/s") -> None:
    print(f"{label:<34} | astrai {ours:9.1f} {unit} | transformers {theirs:9.1f} {unit} | ratio {ours / theirs:.2f}x", flush=True)


def measure_bandwidth(repeats: int = 5) -> float:
    """Return the read bandwidth in bytes/s: summing a 1 GiB buffer, best of ``repeats``."""
    buffer = torch.ones(256 * 1024**2, dtype=torch.float32)
    seconds = best_time(lambda: buffer.sum(), repeats)
    return buffer.numel() * buffer.element_size() / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per figure; the best counts")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per decode run")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--bandwidth", action="store_true", help="also run the 1b bf16 bandwidth row")
    parser.add_argument("--skip-comparison", action="store_true", help="only the bandwidth row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}")

    folder = Path(tempfile.mkdtemp(prefix="astrai-bench-"))
    try:
        if not args.skip_comparison:
            for size in args.models:
                for dtype_name in args.dtypes:
                    compare(size, dtype_name, folder, args)
        if args.bandwidth:
            bandwidth_row(folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def compare(size: str, dtype_name: str, folder: Path, args) -> None:
    dtype = DTYPES[dtype_name]
    model = random_model(MODELS[size], dtype)
    theirs = load_hf(model, folder / f"{size}-{dtype_name}", dtype)
    vocab = model.config.vocab_size
    ours = Generator(model, IdTokenizer(vocab))
    label = f"{size} {dtype_name}"
    row(f"{label} decode batch 1", *decode_rate(ours, theirs, 1, 32, args.new_tokens, args.repeats, vocab))
    row(f"{label} decode batch 8", *decode_rate(ours, theirs, 8, 32, args.new_tokens // 2, args.repeats, vocab))
    row(f"{label} prefill 256 tokens", *prefill_rate(ours, theirs, 256, args.repeats, vocab))


def bandwidth_row(folder: Path, args) -> None:
    model = random_model("1b", torch.bfloat16)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = measure_bandwidth()
    bound = bandwidth / weight_bytes
    theirs = load_hf(model, folder / "1b-bf16", torch.bfloat16)
    ours = Generator(model, IdTokenizer(model.config.vocab_size))
    vocab = model.config.vocab_size
    ours_rate, theirs_rate = decode_rate(ours, theirs, 1, 16, args.new_tokens // 4, 2, vocab)
    print(
        f"1b bf16 decode batch 1 | weights {weight_bytes / 1e9:.2f} GB "
        f"| bandwidth {bandwidth / 1e9:.1f} GB/s "
        f"| bound {bound:.2f} tok/s | astrai {ours_rate:.2f} tok/s, {ours_rate / bound:.0%} of bound "
        f"| transformers {theirs_rate:.2f} tok/s, {theirs_rate / bound:.0%} of bound",
        flush=True,
    )


if __name__ == "__main__":
    main()
