"""Running the model with dictionaries (or ablations) in place of the activations they replace.

Replacement covers the positions a dictionary was trained on (not the window's special tokens).
Several dictionaries splice at once, each reading the already-spliced model, as in the paper's
"all 12 MLPs replaced" numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tcx.runs.record import Placed


def splice_hooks(placed: Sequence[Placed], valid: slice, record: Callable | None = None
                 ) -> list[tuple[str, Callable]]:
    """Hooks that write each dictionary's reconstruction at its target hook. `record(z, y, t)`, if
    given, sees a dictionary's codes, reconstruction and the activation it replaces, as rows (it is
    for a dictionary spliced in alone)."""
    hooks: list[tuple[str, Callable]] = []
    for p in placed:
        captured: dict[str, Tensor] = {}

        def read(act: Tensor, hook, captured=captured) -> Tensor:
            captured["x"] = act
            return act

        def write(act: Tensor, hook, p=p, captured=captured) -> Tensor:
            x = captured.pop("x", act)[:, valid]
            out = act.clone()
            d = p.dictionary
            rows = x.reshape(-1, x.shape[-1]).to(d.W_enc.dtype)  # dictionaries see rows, as in training
            z, y = d.encode_decode(rows)
            if record is not None:
                record(z, y, act[:, valid].reshape(-1, act.shape[-1]).to(d.W_enc.dtype))
            out[:, valid] = y.reshape(*x.shape[:-1], -1).to(act.dtype)
            return out

        if p.input_hook != p.target_hook:
            hooks.append((p.input_hook, read))
        hooks.append((p.target_hook, write))
    return hooks


def ablation_hooks(targets: dict[str, Tensor | None], valid: slice) -> list[tuple[str, Callable]]:
    """Hooks that write zeros (value None) or a fixed vector (e.g. the mean) at each target hook."""

    def make(value: Tensor | None) -> Callable:
        def write(act: Tensor, hook) -> Tensor:
            out = act.clone()
            out[:, valid] = 0.0 if value is None else value.to(act)
            return out

        return write

    return [(hook, make(value)) for hook, value in targets.items()]


@torch.inference_mode()
def target_means(lm, windows: Tensor, hooks: Sequence[str], valid: slice, batch: int) -> dict[str, Tensor]:
    """Mean activation at each hook over the valid positions of `windows` (for mean ablation)."""
    hooks = list(dict.fromkeys(hooks))  # several dictionaries may share a hook: count it once
    sums: dict[str, Tensor] = {}
    count = 0
    for start in range(0, len(windows), batch):
        acts = lm.run_to(windows[start: start + batch], list(hooks))
        for h in hooks:
            a = acts[h][:, valid].double()
            sums[h] = sums.get(h, 0) + a.sum((0, 1))
        count += acts[hooks[0]][:, valid].shape[0] * acts[hooks[0]][:, valid].shape[1]
    return {h: (s / count).float() for h, s in sums.items()}
