"""Training throughput of AstrAI's Transformer against Hugging Face transformers' LlamaForCausalLM.

Both models get the same shape (a ~7M and a ~50M preset), the same batch (8 x 256 tokens), the same
loss, the same AdamW settings and the same thread count. Each step is a forward pass, a backward
pass, gradient clipping and an optimizer step. The two are measured in alternating rounds so that
machine noise hits both alike, and the median round is reported.

The script also measures this machine's matmul peak (fp32 and bf16) and prints model FLOPs
utilisation: MFU = 6 x non-embedding parameters x tokens/s / peak.

    OMP_WAIT_POLICY=PASSIVE python tools/bench/train_speed.py [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from astrai_core import ModelConfig, Transformer

BATCH, SEQ_LEN = 8, 256


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Best observed FLOP/s of a square matmul in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def hf_model(config: ModelConfig) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.dim_ffn,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(hf_config)


def make_step(model: torch.nn.Module, forward: Callable, bf16: bool) -> Callable[[torch.Tensor], None]:
    """Return a function that runs one training step of ``model``: forward, loss, backward, clip, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def step(batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch[:, :-1])  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(preset: str, bf16: bool, rounds: int, steps: int, compile_model: bool) -> dict[str, float]:
    config = ModelConfig.preset(preset, max_len=SEQ_LEN)
    torch.manual_seed(0)
    astrai = Transformer(config)
    # The same switch as TrainConfig.compile: the trainer compiles the module its strategy runs.
    run_astrai = torch.compile(astrai) if compile_model else astrai
    reference = hf_model(config)
    candidates = {
        "astrai": make_step(astrai, lambda ids: run_astrai(ids)["logits"], bf16),
        "transformers": make_step(reference, lambda ids: reference(input_ids=ids).logits, bf16),
    }
    batch = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN + 1))
    for step in candidates.values():
        step(batch)  # warm up allocators and kernels (and compile, with --compile)
        step(batch)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(rounds):
        order = list(candidates) if round_index % 2 == 0 else list(reversed(candidates))
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                candidates[name](batch)
            samples[name].append(BATCH * SEQ_LEN * steps / (time.perf_counter() - start))
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["non_embedding_params"] = config.num_parameters(include_embeddings=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds per row")
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--presets", nargs="+", default=["small", "medium"], help="ModelConfig presets to measure")
    parser.add_argument("--compile", action="store_true", help="run AstrAI's model through torch.compile")
    args = parser.parse_args()

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"threads {torch.get_num_threads()} | matmul peak fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s | "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s")
    print(f"{'model':<8} {'dtype':<5} {'astrai tok/s':>13} {'hf tok/s':>10} {'ratio':>6} {'astrai MFU':>11} {'hf MFU':>7}")
    for preset in args.presets:
        for dtype in ("fp32", "bf16"):
            row = measure(preset, dtype == "bf16", args.rounds, args.steps, args.compile)
            flops_per_token = 6 * row["non_embedding_params"]
            mfu = {name: flops_per_token * row[name] / peaks[dtype] for name in ("astrai", "transformers")}
            print(
                f"{preset:<8} {dtype:<5} {row['astrai']:>13.0f} {row['transformers']:>10.0f} "
                f"{row['astrai'] / row['transformers']:>6.2f} {mfu['astrai']:>10.1%} {mfu['transformers']:>7.1%}"
            )


if __name__ == "__main__":
    main()
