"""The model's own loss, the measure of how much behaviour survives a splice.

Causal LMs: next-token cross-entropy (and KL from the clean next-token distribution).
Encoders (the MiniLM default, which has no LM head): the model's output is its mean-pooled,
L2-normalised sentence embedding, and the loss is 1 - cos(clean embedding, spliced embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor


def causal_outputs(lm, tokens: Tensor, hooks: Sequence[tuple[str, Callable]]) -> Tensor:
    """Next-token log-probabilities [batch, pos-1, vocab]."""
    logits = lm.run_with_hooks(tokens, hooks, return_type="logits")
    return logits[:, :-1].float().log_softmax(-1)


def causal_loss(logprobs: Tensor, tokens: Tensor) -> Tensor:
    """Per-window mean next-token cross-entropy."""
    target = tokens[:, 1:].to(logprobs.device)
    return -logprobs.gather(-1, target[..., None])[..., 0].mean(-1)


def causal_kl(clean: Tensor, other: Tensor) -> Tensor:
    """Per-window mean KL(clean || other) of next-token distributions."""
    return F.kl_div(other, clean, log_target=True, reduction="none").sum(-1).mean(-1)


def encoder_outputs(lm, tokens: Tensor, hooks: Sequence[tuple[str, Callable]]) -> Tensor:
    """The sentence embedding [batch, d]: mean over positions of `embedding_hook`, normalised."""
    name = lm.spec.embedding_hook
    # (the forward stops there: MiniLM's 30k-vocab head after it would cost 2.5x the rest)
    return F.normalize(lm.run_to(tokens, [name], edits=hooks)[name].float().mean(1), dim=-1)


def encoder_loss(clean: Tensor, other: Tensor) -> Tensor:
    """Per-window 1 - cos(clean, other)."""
    return 1.0 - (clean * other).sum(-1)


def outputs(lm, tokens: Tensor, hooks: Sequence[tuple[str, Callable]]) -> Tensor:
    """The output the model's loss is read from: next-token log-probabilities, or the sentence embedding."""
    return (causal_outputs if lm.spec.kind == "causal" else encoder_outputs)(lm, tokens, hooks)


def loss(lm, tokens: Tensor, clean: Tensor, other: Tensor) -> Tensor:
    """Per-window loss of `other`: next-token CE, or 1 - cos from the clean sentence embedding."""
    return causal_loss(other, tokens) if lm.spec.kind == "causal" else encoder_loss(clean, other)


def compare(lm, tokens: Tensor, clean: Tensor, other: Tensor, name: str) -> dict[str, Tensor]:
    """The variant `name`'s per-window loss and, for causal models, `kl_<name>`, its KL from `clean`."""
    out = {name: loss(lm, tokens, clean, other)}
    if lm.spec.kind == "causal":
        out[f"kl_{name}"] = causal_kl(clean, other)
    return out
