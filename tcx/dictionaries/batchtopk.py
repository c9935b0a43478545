"""BatchTopK dictionary (Bussmann et al. 2024): the k·batch largest activations of the whole batch
fire, so rows may use more or fewer than k features. For inference (no batch to rank against),
a threshold estimated during training takes over: the running mean of the smallest activation
kept per batch, which reproduces the training firing rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.dictionaries.base import Activation
from tcx.dictionaries.sparse import Rule, Selection, above, batch_top_k
from tcx.dictionaries.topk import TopKConfig, TopKDictionary
from tcx.errors import ConfigError


@dataclass(kw_only=True)
class BatchTopKConfig(TopKConfig):
    threshold_momentum: float = 0.99
    """The inference threshold is this running average (per step) of the batch's smallest kept code."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise ConfigError(f"threshold_momentum must lie in [0, 1), got {self.threshold_momentum}: at 1 or "
                              "more the inference threshold never follows the codes (it ran to 17,510 in 40 "
                              "steps at 1.5, and the dictionary fired nothing at evaluation).")

    def build(self, d_in: int, d_out: int, seed: int = 0) -> BatchTopKDictionary:
        self.check_width(d_in)
        return BatchTopKDictionary(self, d_in, d_out, seed)


class BatchTopKDictionary(TopKDictionary):
    cfg: BatchTopKConfig

    def activation(self) -> Activation:
        """At inference one threshold for all features: a JumpReLU with a constant threshold."""
        return Activation("jumprelu", threshold=self.threshold.clamp_min(0.0).expand(self.d_sae).clone())

    def __init__(self, cfg: BatchTopKConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__(cfg, d_in, d_out, seed)
        self.register_buffer("threshold", torch.tensor(-1.0))
        """Inference threshold; -1 until the first training batch sets it."""

    def select(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        if not self.training:
            return pre * (pre > self.threshold.clamp_min(0.0))
        flat = pre.flatten()
        values, index = flat.topk(self.cfg.k * pre.shape[0], sorted=False)
        values = values.relu()  # (on the kept only, as `topk_rows`)
        self.track_threshold(values)
        return torch.zeros_like(flat).scatter_(0, index, values).view_as(pre)

    def rule(self) -> Rule:
        if not self.training:
            return above(float(self.threshold.clamp_min(0.0)))
        pick = batch_top_k(self.cfg.k)

        def rule(pre: Tensor) -> Selection:
            picked = pick(pre)
            self.track_threshold(picked[0])
            return picked
        return rule

    @torch.no_grad()
    def track_threshold(self, values: Float[Tensor, " kept"]) -> None:
        """Move the inference threshold towards the smallest positive activation kept (none kept:
        unchanged). On the device, reading nothing back: a step that waits for nothing."""
        positive = values > 0
        smallest, m = values.masked_fill(~positive, float("inf")).min(), self.cfg.threshold_momentum
        moved = torch.where(self.threshold < 0, smallest, m * self.threshold + (1 - m) * smallest)
        self.threshold.copy_(torch.where(positive.any(), moved, self.threshold))
