"""Where the sparse ReLU step stops paying: sparse against dense steps at a range of firing shares.

`MAX_DENSITY` (tcx/dictionaries/sparse.py) is the share of firing codes above which a ReLU step runs
dense. This measures both steps of one dictionary (Gaussian x, an SAE, Adam) with b_enc set so that
each share fires, in float32 and under bf16 autocast (`trainer.precision=bf16-mixed`), and prints the
ratio: where it falls below 1 is the crossover for this machine.

    python benchmarks/sparse_crossover.py                         # 2 CPU cores: about 5 minutes
    python benchmarks/sparse_crossover.py --device cuda --batch 4096 --d-sae 6144
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from tcx.dictionaries import sparse
from tcx.dictionaries.relu import ReLUConfig


def rows_per_s(d, x, steps: int, autocast: bool) -> tuple[float, float]:
    opt = torch.optim.Adam(d.parameters(), lr=1e-7)  # (the weights barely move: the share stays put)
    context = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def step():
        with context():
            out = d(x, x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return out

    for _ in range(3):
        out = step()
    rates = []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * len(x) / (time.perf_counter() - start))
    return statistics.median(rates), float(sparse.l0(out.z)) / d.d_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--d-in", type=int, default=384)
    parser.add_argument("--d-sae", type=int, default=3072)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shares", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.04, 0.08, 0.12, 0.16])
    args = parser.parse_args()
    sparse.MAX_DENSITY = {torch.float32: 1.0, torch.bfloat16: 1.0}  # (sparse at every share, to compare)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in, device=args.device)
    d = ReLUConfig(d_sae=args.d_sae, l1_coeff=1e-3, normalize=False).build(args.d_in, args.d_in).to(args.device)
    pre = (x[:512] @ d.W_enc).flatten().float()
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()}-core CPU"
    print(f"ReLU step on {name}: batch {args.batch}, d_in {args.d_in}, {args.d_sae} latents; rows/s\n")
    print("| firing (fp32 / bf16) | fp32 sparse | fp32 dense | ratio | bf16-mixed sparse | bf16-mixed dense | ratio |")
    print("|---|---|---|---|---|---|---|")
    for share in args.shares:
        with torch.no_grad():
            d.b_enc.fill_(-float(pre.quantile(1 - share)))
        cells, fired = [], []
        for autocast in (False, True):
            os.environ["TCX_SPARSE"] = "1"
            s, share_fired = rows_per_s(d, x, args.steps, autocast)
            os.environ["TCX_SPARSE"] = "0"
            r, _ = rows_per_s(d, x, args.steps, autocast)
            cells += [f"{s:,.0f}", f"{r:,.0f}", f"{s / r:.2f}×"]
            fired.append(f"{100 * share_fired:.1f}%")
        print(f"| {' / '.join(fired)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
