"""Greater-than in an encoder with no LM head (MiniLM): a linear probe, and the circuit target it makes.

    python scripts/year_probe.py [out=probe.pt] [model=minilm] [hook=blocks.5.hook_out] [seed=0]

Prompts "The war lasted from A to B" with A and B single-token years. The label is B > A. For every
B there is one prompt with A < B and one with A > B, so anything that reads B alone scores exactly
chance. The probe (logistic regression on `hook` at B's position) is trained on 80% of the B years
and tested on prompts whose B it never saw. The control retrains it on shuffled labels. It writes
`{direction, bias}` for `tcx-circuit target=direction target.path=<out> target.pos=<B's pos>`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tcx.config import build_node
from tcx.runs.open import model_config_named

TEMPLATE = "The war lasted from {a} to {b}"


def single_token_years(lm: Any, first: int = 1600, last: int = 1999) -> list[int]:
    return [y for y in range(first, last + 1) if len(lm.encode(str(y))) == 1]


def build_pairs(years: list[int], seed: int) -> list[tuple[int, int, int]]:
    """(a, b, label): for each b one a below and one above, drawn at random."""
    rng = random.Random(seed)
    pairs = []
    for b in years:
        below, above = [y for y in years if y < b], [y for y in years if y > b]
        if below and above:
            pairs += [(rng.choice(below), b, 1), (rng.choice(above), b, 0)]
    return pairs


def balanced(pairs: list[tuple[int, int, int]]) -> bool:
    """Every B appears with label 1 exactly as often as with 0: a probe of B alone scores 50%."""
    count: dict[int, int] = {}
    for _, b, label in pairs:
        count[b] = count.get(b, 0) + (1 if label else -1)
    return not any(count.values())


def fit(x: Tensor, y: Tensor, steps: int = 300, weight_decay: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Logistic regression on raw activations (standardised inside, folded back out)."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    xs = (x - mu) / sd

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    direction = (w / sd).detach()
    return direction, (b - (mu * direction).sum()).detach()


def accuracy(x: Tensor, y: Tensor, direction: Tensor, bias: Tensor) -> float:
    return ((x @ direction + bias > 0).float() == y).float().mean().item()


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv[1:] if "=" in a)
    model = opts.get("model", "minilm")
    lm = build_node(model_config_named(model), "model").load()
    hook = opts.get("hook", f"blocks.{lm.spec.n_layers - 1}.hook_out")
    seed = int(opts.get("seed", 0))
    years = single_token_years(lm)
    pairs = build_pairs(years, seed)
    tokens = torch.tensor([lm.prefix_ids + lm.encode(TEMPLATE.format(a=a, b=b)) + lm.suffix_ids for a, b, _ in pairs])
    pos_b = len(lm.prefix_ids) + len(lm.encode(TEMPLATE.format(a=years[0], b=years[0]))) - 1
    acts = torch.cat([lm.run_to(tokens[i:i + 64], [hook])[hook][:, pos_b] for i in range(0, len(tokens), 64)])
    labels = torch.tensor([float(label) for _, _, label in pairs])
    held_years = set(random.Random(seed).sample(sorted({b for _, b, _ in pairs}), k=len(years) // 5))
    test = torch.tensor([b in held_years for _, b, _ in pairs])
    direction, bias = fit(acts[~test].double(), labels[~test].double())
    shuffled = labels[~test][torch.randperm(int((~test).sum()), generator=torch.Generator().manual_seed(seed))]
    c_dir, c_bias = fit(acts[~test].double(), shuffled.double())
    out = Path(opts.get("out", "probe.pt"))
    torch.save({"direction": direction.float(), "bias": bias.float()}, out)
    a, b, _ = pairs[0]
    report = {
        "model": model, "hook": hook, "position_of_b": pos_b, "single_token_years": [years[0], years[-1], len(years)],
        "prompts": len(pairs), "train_prompts": int((~test).sum()), "test_prompts": int(test.sum()),
        "train_accuracy": accuracy(acts[~test].double(), labels[~test].double(), direction, bias),
        "test_accuracy": accuracy(acts[test].double(), labels[test].double(), direction, bias),
        "shuffled_label_test_accuracy": accuracy(acts[test].double(), labels[test].double(), c_dir, c_bias),
        "each_b_once_per_label": balanced(pairs), "probe": str(out),
        "circuit": (f"tcx-circuit transcoders=<all-layers sweep dir> prompt=\"{TEMPLATE.format(a=a, b=b)}\" "
                    f"target=direction target.path={out} target.hook={hook} target.pos={pos_b}"),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv)
