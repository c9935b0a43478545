"""SmolLM2-135M (Q4_1) on this machine: forward tokens/s to a layer (the model stops at the deepest
hook a run needs), clean next-token CE on held-out docstrings and on English prose (the CPython
LICENSE.txt every Python install carries, with a shuffled-token control), and peak RSS.

    python benchmarks/smollm2_forward.py          # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import resource
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def next_token_ce(lm, tokens: torch.Tensor, start: int) -> float:
    with torch.inference_mode():
        logits = lm.bridge(tokens)
    return F.cross_entropy(logits[:, start:-1].flatten(0, 1), tokens[:, start + 1:].flatten()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=16, help="context windows of 128 tokens per measurement")
    args = parser.parse_args()

    from tcx.config import build_node, compose_train
    from tcx.data.windows import load_windows

    cfg = compose_train(["model=smollm2-q4"])
    spec, corpus = build_node(cfg.model, "model"), build_node(cfg.data, "data")
    start = time.perf_counter()
    lm = spec.load()
    print(f"load (converted cache): {time.perf_counter() - start:.1f} s")

    windows = load_windows(corpus, lm, 0, cfg.cache_dir, args.windows * 128)
    heldout = windows.heldout[: args.windows]
    for layer in (3, 15, 29):
        hook = spec.hook("mlp_out", layer)
        lm.run_to(heldout[:2], [hook])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(heldout), 8):
            lm.run_to(heldout[i: i + 8], [hook])
        rate = heldout.numel() / (time.perf_counter() - start)
        print(f"forward to layer {layer:>2} ({hook}): {rate:,.0f} tok/s")

    n = windows.n_prefix  # CE over every prediction after the window's opening <|endoftext|>
    print(f"clean CE, held-out docstrings ({heldout[:, n:].numel():,} tokens): {next_token_ce(lm, heldout, 0):.3f}")
    text = Path(sysconfig.get_paths()["stdlib"], "LICENSE.txt").read_text()
    ids = lm.encode(text)
    body = spec.ctx_len - len(lm.prefix_ids)
    rows = [lm.prefix_ids + ids[i: i + body] for i in range(0, len(ids) - body, body)]
    prose = torch.tensor(rows)
    shuffled = prose.clone()
    shuffled[:, n:] = prose[:, n:].flatten()[torch.randperm(prose[:, n:].numel(),
                                                            generator=torch.Generator().manual_seed(0))].view_as(
        prose[:, n:])
    print(f"clean CE, CPython LICENSE.txt ({prose[:, n:].numel():,} tokens): {next_token_ce(lm, prose, 0):.3f}  "
          f"(same tokens shuffled: {next_token_ce(lm, shuffled, 0):.3f})")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:,.0f} MiB  (torch threads {torch.get_num_threads()}, python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
