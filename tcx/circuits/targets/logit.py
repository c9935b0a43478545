"""A logit (`target=logit`, by default the model's own top prediction) or the difference of two
(`target=logit_diff`): read from the final norm's output through the unembedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING

from tcx.circuits.targets.base import Target, TargetConfig, at, one_token, position
from tcx.errors import ConfigError


def logit_target(rm, token: str | int | None, other: str | int | None, pos: int | str) -> Target:
    w = rm.weights
    if w.W_U is None:
        raise ConfigError(f"{rm.lm.spec.name} has no language-model head: use target=direction "
                          "(a probe) or target=feature.")
    p = position(rm, pos)
    bias = w.b_U if w.b_U is not None else torch.zeros(w.W_U.shape[1], dtype=rm.dtype)
    logits = rm.cache["ln_final.hook_out"][0, p] @ w.W_U + bias
    a = int(logits.argmax()) if token is None else one_token(rm, token, "token")
    b = None if other is None else one_token(rm, other, "other")
    u = w.W_U[:, a] - (w.W_U[:, b] if b is not None else 0)
    constant = float(bias[a] - (bias[b] if b is not None else 0))
    probs = logits.softmax(-1)
    label = f"logit({rm.token_text(a)!r})" + ("" if b is None else f" - logit({rm.token_text(b)!r})")
    value = float(logits[a] - (logits[b] if b is not None else 0))
    return Target("logit" if b is None else "logit_diff", label, "ln_final.hook_out", at(rm, p, u),
                  constant, value, p, float(probs[a]), a)


@dataclass(kw_only=True)
class LogitConfig(TargetConfig):
    token: str | None = None
    """The token, as text that is one token (or '#<id>'); null: the model's top prediction at `pos`."""

    def resolve(self, rm) -> Target:
        return logit_target(rm, self.token, None, self.pos)


@dataclass(kw_only=True)
class LogitDiffConfig(TargetConfig):
    token: str = MISSING
    """The token whose logit counts, as text that is one token (or '#<id>')."""
    other: str = MISSING
    """The token whose logit is subtracted."""

    def resolve(self, rm) -> Target:
        return logit_target(rm, self.token, self.other, self.pos)
