"""Measure peak memory while loading a checkpoint, against the size of its weights.

Writes the ``1b`` preset (or ``--preset``) with random bf16 weights to a temporary directory, then
loads it with ``astrai_core.load_checkpoint`` in a fresh subprocess and reads that process's peak
resident set size (``VmHWM`` in ``/proc/self/status``). Loading should not hold the weights twice,
so the peak stays close to the weight bytes plus the interpreter and PyTorch themselves, which
the script also measures (a subprocess that imports everything and loads nothing).

    python tools/bench/load_memory.py            # about 2.2 GB on disk under /tmp, deleted after
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
import json, sys, torch
from astrai_core import load_checkpoint
if sys.argv[1] != "-":
    model = load_checkpoint(sys.argv[1]).model
    float(sum(p.sum(dtype=torch.float32) for p in model.parameters()))  # touch every weight page
peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_rss": peak}))
"""


def write_random_checkpoint(path: Path, preset: str) -> int:
    """Save ``preset`` with random bf16 weights to ``path`` and return the weight bytes."""
    import torch
    from astrai_core import ModelConfig, Transformer, save_checkpoint

    config = ModelConfig.preset(preset)
    with torch.device("meta"):
        model = Transformer(config)
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            data = torch.empty(param.shape, dtype=torch.bfloat16).normal_(0, 0.02, generator=generator)
            setattr(module, name, torch.nn.Parameter(data, requires_grad=False))
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_rope("cpu")
    save_checkpoint(path, model)
    return (path / "model.safetensors").stat().st_size


def peak_rss(checkpoint: str) -> int:
    output = subprocess.run([sys.executable, "-c", MEASURE, checkpoint], check=True, capture_output=True, text=True)
    return json.loads(output.stdout)["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="1b", help="ModelConfig preset to write and load")
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="astrai-load-memory-"))
    try:
        weight_bytes = write_random_checkpoint(directory / "ckpt", args.preset)
        baseline = peak_rss("-")
        peak = peak_rss(str(directory / "ckpt"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    gib = 1024**3
    print(f"preset {args.preset} | weights {weight_bytes / gib:.2f} GiB (bf16)")
    print(f"peak RSS without a model (python + torch): {baseline / gib:.2f} GiB")
    print(f"peak RSS loading the model: {peak / gib:.2f} GiB")
    print(f"peak RSS / weight bytes: {peak / weight_bytes:.2f}x (target <= 1.3x)")
    print(f"(peak RSS - baseline) / weight bytes: {(peak - baseline) / weight_bytes:.2f}x")


if __name__ == "__main__":
    main()
