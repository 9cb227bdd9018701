"""Compare PyTorch's CPU matrix product with oneDNN's prepacked one, as decoding runs them.

``astrai_infer``'s ``FastForward`` prepacks weights for oneDNN, and this script contains the
measurements behind when it does. For the ``small`` (~7M) and ``medium`` (~50M) presets it builds
every weight matrix a forward pass uses: per layer the fused q/k/v, attention output, fused
gate/up and down matrices, then the output head. It times one pass over all of them in order, as a
decoding step does, so weights stream from memory instead of sitting in the cache. Plain passes
use ``F.linear``, and packed passes use ``torch.ops.mkldnn._linear_pointwise`` with weights packed
once. The two alternate, and the script prints the plain time over the packed time (above 1:
packing is faster).

    OMP_WAIT_POLICY=PASSIVE python tools/bench/gemm_layouts.py [--dtypes fp32 bf16] [--rows 1 8 256]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from astrai_core import ModelConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def weight_shapes(preset: str) -> list[tuple[int, int]]:
    """Return (out_features, in_features) of every matrix of a forward pass, in order."""
    config = ModelConfig.preset(preset)
    C, D = config.dim, config.head_dim
    layer = [
        ((config.n_heads + 2 * config.n_kv_heads) * D, C),  # fused q/k/v
        (C, config.n_heads * D),  # attention output
        (2 * config.dim_ffn, C),  # fused gate/up
        (C, config.dim_ffn),  # down
    ]
    return layer * config.n_layers + [(config.vocab_size, C)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rows", nargs="*", type=int, default=[1, 2, 8, 256], help="input rows per product")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; fastest of each counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = os.environ["OMP_WAIT_POLICY"]
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | OMP_WAIT_POLICY {policy}")
    print("one pass over a model's matrices: plain ms, packed ms, plain / packed (above 1: packed is faster)")
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            print(f"{dtype_name}: skipped, this CPU has no oneDNN bf16 support")
            continue
        for preset in ("small", "medium"):
            weights = [torch.randn(shape).to(dtype) for shape in weight_shapes(preset)]
            packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
            megabytes = sum(w.numel() * w.element_size() for w in weights) / 1e6
            for rows in args.rows:
                inputs = {w.shape[1]: torch.randn(1, rows, w.shape[1]).to(dtype) for w in weights}

                def plain_pass():
                    for w in weights:
                        F.linear(inputs[w.shape[1]], w)

                def packed_pass():
                    for w, p in zip(weights, packed):
                        torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, None, "none", [], "")

                plain_times, packed_times = [], []
                for _ in range(args.rounds):
                    plain_times.append(timed(plain_pass))
                    packed_times.append(timed(packed_pass))
                plain, pack = min(plain_times), min(packed_times)
                print(
                    f"{dtype_name} {preset:<6} ({len(weights)} matrices, {megabytes:5.0f} MB) "
                    f"rows {rows:>3} | "
                    f"plain {plain * 1e3:7.2f} ms | packed {pack * 1e3:7.2f} ms | ratio {plain / pack:.2f}",
                    flush=True,
                )


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
