"""Greater-than on a causal LM offline (the paper's case study, at the digit level).

SmolLM2's tokenizer writes every digit as its own token, so the paper's prompt "The war lasted
from the year 1732 to the year 17" asks for one digit: the tens digit of the end year. With start
year 17XY the tens digit d of a valid end year is at least X, so the task's metric is

    prob_diff = P(d >= X) - P(d < X)      (over the ten digit tokens; 1 = perfect, -1 = inverted)

and the logit the circuit explains is logit(X) - logit(X-1), the decision at the boundary.

    python scripts/greater_than.py behaviour             # clean behaviour over the prompt set
    python scripts/greater_than.py layers                # mean-ablate each MLP: which layers matter
    python scripts/greater_than.py ablate RUN_DIR 1738,343 tens=3   # zero transcoder features: the metric's drop

`model=` (default smollm2-q4) picks any causal model in conf/model/; `n=` the number of prompts
(default 100); `tens=X` keeps the prompts whose start year is 17X_.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tcx.config import build_node
from tcx.runs.open import model_config_named

NOUNS = ["war", "expedition", "drought", "siege", "reign", "construction", "journey", "famine",
         "strike", "trial", "voyage", "dynasty", "plague", "rebellion", "occupation"]
TEMPLATE = "The {noun} lasted from the year 17{yy:02d} to the year 17"


@dataclass
class Task:
    """Prompts of one token length (position-wise means are then well defined), their start
    years' tens digits, and the digit tokens' ids."""

    tokens: Tensor          # [prompt, pos]
    tens: Tensor            # [prompt]  X of 17XY
    digit_ids: Tensor       # [10]
    texts: list[str]


def build_task(lm: Any, n: int = 100, seed: int = 0) -> Task:
    digit_ids = [lm.encode(str(d)) for d in range(10)]
    if any(len(ids) != 1 for ids in digit_ids):
        sys.exit(f"{lm.spec.name}: digits are not single tokens; this digit-level task needs them.")
    lengths = {noun: len(lm.encode(TEMPLATE.format(noun=noun, yy=35))) for noun in NOUNS}
    common = max(set(lengths.values()), key=list(lengths.values()).count)
    nouns = sorted({noun for noun, k in lengths.items() if k == common})
    rng = random.Random(seed)
    texts, tens = [], []
    for i in range(n):  # tens digit 1..8 in turn: both a correct and an incorrect digit exist
        yy = 10 * (1 + i % 8) + rng.randrange(10)
        texts.append(TEMPLATE.format(noun=rng.choice(nouns), yy=yy))
        tens.append(yy // 10)
    tokens = torch.tensor([lm.prefix_ids + lm.encode(t) for t in texts])
    return Task(tokens, torch.tensor(tens), torch.tensor([ids[0] for ids in digit_ids]), texts)


def digit_probs(logits: Tensor, task: Task) -> Tensor:
    """[prompt, 10]: the next-token probability of each digit at the last position."""
    return logits[:, -1].float().softmax(-1)[:, task.digit_ids]


def metrics(probs: Tensor, task: Task) -> dict[str, float]:
    d = torch.arange(10)
    above = d[None] > task.tens[:, None]
    equal = d[None] == task.tens[:, None]
    below = d[None] < task.tens[:, None]
    p_gt, p_eq, p_lt = ((probs * m).sum(-1) for m in (above, equal, below))
    rows = torch.arange(len(probs))
    logit_diff = probs[rows, task.tens].log() - probs[rows, task.tens - 1].log()  # logit(X) - logit(X-1)
    return {"prob_diff": (p_gt + p_eq - p_lt).mean().item(), "p_greater": p_gt.mean().item(),
            "p_equal": p_eq.mean().item(), "p_less": p_lt.mean().item(),
            "digit_mass": probs.sum(-1).mean().item(), "logit_diff": logit_diff.mean().item(),
            "accuracy": (probs.argmax(-1) >= task.tens).float().mean().item()}


def load(model: str) -> Any:
    """A conf/model option by name (an unknown one is named with the options there)."""
    return build_node(model_config_named(model), "model").load()


@torch.inference_mode()
def run(lm: Any, task: Task, hooks: list[tuple[str, Any]] = ()) -> Tensor:
    return digit_probs(lm.run_with_hooks(task.tokens, hooks), task)


def behaviour(lm: Any, task: Task) -> dict[str, Any]:
    """The clean metric, and the control: the same outputs scored against another prompt's start
    year (a permutation), i.e. what a model that ignored the start year would score."""
    probs = run(lm, task)
    shuffled = Task(task.tokens, task.tens[torch.randperm(len(task.tens), generator=torch.Generator().manual_seed(0))],
                    task.digit_ids, task.texts)
    return {"clean": metrics(probs, task), "start_year_shuffled": metrics(probs, shuffled)}


def layer_scan(lm: Any, task: Task) -> list[dict[str, float]]:
    """Mean-ablate each MLP's output (position-wise mean over the prompts): the metric after."""
    hooks = [lm.spec.hook("mlp_out", layer) for layer in range(lm.spec.n_layers)]
    means = {h: act.mean(0, keepdim=True) for h, act in lm.run_to(task.tokens, hooks).items()}  # one pass
    rows = []
    for layer, hook in enumerate(hooks):
        probs = run(lm, task, [(hook, lambda act, hook, m=means[hook]: m.expand_as(act).clone())])
        rows.append({"layer": layer, **metrics(probs, task)})
        print(f"MLP {layer:2d} mean-ablated: prob_diff {rows[-1]['prob_diff']:.3f}", file=sys.stderr, flush=True)
    return rows


@torch.inference_mode()
def ablate(lm: Any, task: Task, run_dir: str, features: list[int]) -> dict[str, Any]:
    """Zero `features` of the transcoder at run_dir in every prompt, keeping its error term (so
    with no features zeroed the model is unchanged): the metric before and after, and after
    zeroing as many other features drawn from those that fire on these prompts (the control)."""
    from tcx.runs import open_runs

    opened = open_runs([run_dir]).dictionaries[0]
    tc = opened.dictionary.eval()
    x = lm.run_to(task.tokens, [opened.input_hook])[opened.input_hook].float()
    firing = (tc.encode(x) > 0).flatten(0, 1).any(0).nonzero().flatten().tolist()
    others = [f for f in firing if f not in features]
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(0))
    control = [others[i] for i in order[:len(features)]]

    def hooks(zeroed: list[int]) -> list[tuple[str, Any]]:
        cache: dict[str, Tensor] = {}

        def read(act: Tensor, hook: Any) -> Tensor:
            cache["x"] = act
            return act

        def write(act: Tensor, hook: Any) -> Tensor:
            z = tc.encode(cache["x"].float())
            keep = z.clone()
            keep[..., zeroed] = 0
            return act - (tc.decode(z) - tc.decode(keep)).to(act.dtype)

        return [(opened.input_hook, read), (opened.target_hook, write)]

    return {"run": run_dir, "features": features, "clean": metrics(run(lm, task), task),
            "spliced_none_zeroed": metrics(run(lm, task, hooks([])), task),
            "ablated": metrics(run(lm, task, hooks(features)), task),
            "control_features": control, "control": metrics(run(lm, task, hooks(control)), task)}


OPTIONS = ("model", "n", "seed", "tens")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`key=value` options (the known keys only: a member folder, `<sweep>/0/layer=0`, has '=' in it
    too) and the positional arguments."""
    is_opt = [a.split("=", 1)[0] in OPTIONS for a in argv]
    return (dict(a.split("=", 1) for a, o in zip(argv, is_opt, strict=True) if o),
            [a for a, o in zip(argv, is_opt, strict=True) if not o])


def main(argv: list[str]) -> None:
    opts, args = parse(argv[1:])
    if not args:
        sys.exit(__doc__)
    lm = load(opts.get("model", "smollm2-q4"))
    task = build_task(lm, int(opts.get("n", 100)), int(opts.get("seed", 0)))
    if "tens" in opts:  # only the prompts whose start year has this tens digit
        keep = task.tens == int(opts["tens"])
        texts = [t for t, k in zip(task.texts, keep.tolist(), strict=True) if k]
        task = Task(task.tokens[keep], task.tens[keep], task.digit_ids, texts)
    started = time.time()
    if args[0] == "behaviour":
        out: Any = behaviour(lm, task)
    elif args[0] == "layers":
        out = {"clean": metrics(run(lm, task), task), "layers": layer_scan(lm, task)}
    elif args[0] == "ablate":
        out = ablate(lm, task, args[1], [int(f) for f in args[2].split(",")])
    else:
        sys.exit(__doc__)
    out = {"prompts": len(task.texts), "tokens": task.tokens.numel(), "seconds": time.time() - started,
           "result": out}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv)
