"""Sparsity and reconstruction metrics, batched and exact (tested on hand-made activations)."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from tcx.dictionaries.sparse import fired, l0  # noqa: F401  (they take sparse codes too)


def fvu(y: Float[Tensor, "batch d"], target: Float[Tensor, "batch d"]) -> Float[Tensor, ""]:
    """Fraction of variance unexplained: squared error over the target's total variance."""
    return (y - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()


def mse(y: Float[Tensor, "batch d"], target: Float[Tensor, "batch d"]) -> Float[Tensor, ""]:
    """Squared error summed over dimensions, averaged over rows (the training loss's term)."""
    return (y - target).pow(2).sum(-1).mean()


def dead_fraction(tokens_since_fired: Tensor, window: int) -> float:
    """Fraction of features that have not fired in the last `window` tokens."""
    return (tokens_since_fired >= window).float().mean().item()
