"""The sparse step's two halves alone, Triton kernels (tcx/dictionaries/kernels.py) against the eager
products (`TCX_TRITON=0`), for a few kernel shapes: the decoder's forward and backward, and the
encoder's selection, by-feature sort and backward. Milliseconds per call, median of `--repeats`.

    python benchmarks/sparse_kernels.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from tcx.dictionaries import kernels
from tcx.dictionaries.sparse import decode, encode_sparse, marked, top_k

SHAPES = [(16, 128, 4), (32, 128, 4), (64, 128, 4), (32, 64, 2), (16, 256, 8), (8, 128, 4), (32, 256, 8)]
"""Kernel shapes tried: (entries a program reads at once, output columns a program writes, warps)."""


def ms(fn, repeats: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=6144)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dev, n, d, m = args.device, args.batch, args.d_in, args.d_sae
    torch.manual_seed(0)
    print(f"batch {n}, d {d}, {m} latents on {torch.cuda.get_device_name() if dev == 'cuda' else 'CPU'}; ms per call")
    print("| codes | dtype | half | eager | " + " | ".join(f"BJ {j} BD {c} w{w}" for j, c, w in SHAPES) + " |")
    print("|---" * (4 + len(SHAPES)) + "|")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(n, d, device=dev, dtype=dtype)
        W_enc = (torch.randn(d, m, device=dev) / d**0.5).to(dtype).requires_grad_()
        b_enc = torch.zeros(m, device=dev, dtype=dtype, requires_grad=True)
        W_dec = (torch.randn(m, d, device=dev) / d**0.5).to(dtype).requires_grad_()
        b_dec = torch.zeros(d, device=dev, dtype=dtype)
        pre = (x @ W_enc + b_enc).detach()
        grad_y = torch.randn(n, d, device=dev, dtype=dtype)
        relu = marked(pre > pre.float().flatten()[:2**24].quantile(1 - 165 / m).to(dtype))
        for name, rule in (("TopK k=32", top_k(32)), ("ReLU L0 165", relu)):
            for half, fn in halves(x, W_enc, b_enc, W_dec, b_dec, pre, grad_y, rule):
                os.environ["TCX_TRITON"] = "0"
                cells = [f"{ms(fn, args.repeats, dev):.3f}"]
                os.environ["TCX_TRITON"] = "1"
                shipped = kernels.BJ, kernels.MAX_COLUMNS, kernels.NUM_WARPS
                for kernels.BJ, kernels.MAX_COLUMNS, kernels.NUM_WARPS in SHAPES:
                    cells.append(f"{ms(fn, args.repeats, dev):.3f}")
                kernels.BJ, kernels.MAX_COLUMNS, kernels.NUM_WARPS = shipped
                print(f"| {name} | {str(dtype).removeprefix('torch.')} | {half} | " + " | ".join(cells) + " |",
                      flush=True)


def halves(x, W_enc, b_enc, W_dec, b_dec, pre, grad_y, rule):
    """The decoder's forward and backward; the encoder's selection, sort and backward."""
    codes = encode_sparse(x, W_enc, b_enc, rule, pre)

    def decoder():
        z = codes._replace(values=codes.values.detach().requires_grad_())
        decode(z, W_dec, b_dec).backward(grad_y)

    def encoder():
        encode_sparse(x, W_enc, b_enc, rule, pre).values.sum().backward()
    return ("decoder", decoder), ("encoder", encoder)


if __name__ == "__main__":
    main()
