"""`Histogram`: each feature's non-zero activations in equal-width bins over [0, a running scale],
kept exact in fixed memory.

The scale starts just above a feature's first batch maximum and doubles (by whole powers of two)
whenever an activation reaches it; doubling merges bins pairwise, which is exact because the new
edges are a subset of the old. At the end the maximum lies in [scale/2, scale), so the `bands` (groups of
`bins // bands` bins) holding [0, max] number between bands/2 + 1 and `bands`: the 5-10 equal-width
activation bands of a dashboard, each with its exact share.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


class Histogram:
    def __init__(self, n_features: int, bins: int = 40, bands: int = 10):
        if bins % bands:
            raise ValueError(f"bins={bins} must be a multiple of bands={bands}")
        self.bins, self.bands = bins, bands
        self.scale = torch.zeros(n_features, dtype=torch.float64)
        self.max = torch.zeros(n_features, dtype=torch.float64)
        self.counts = torch.zeros(n_features, bins, dtype=torch.long)

    def add(self, feature: Int[Tensor, " n"], value: Float[Tensor, " n"]) -> Int[Tensor, " grown"]:
        """Count non-zero activations; returns the features whose scale grew (their bands moved)."""
        v = value.double()
        batch_max = torch.zeros_like(self.max).scatter_reduce(0, feature, v, "amax")
        self.max = torch.maximum(self.max, batch_max)
        # every activation stays strictly below its feature's scale, so none sits on the closed end of
        # the last bin (it would belong to the middle one once the scale doubles)
        fresh = (self.scale == 0) & (batch_max > 0)
        self.scale[fresh] = torch.nextafter(batch_max[fresh], torch.tensor(torch.inf, dtype=torch.float64))
        grow = (self.scale > 0) & (batch_max >= self.scale)
        if grow.any():
            shift = torch.floor(torch.log2(batch_max[grow] / self.scale[grow])).long() + 1
            shift += (self.scale[grow] * torch.pow(2.0, shift.double()) <= batch_max[grow]).long()
            self.scale[grow] *= torch.pow(2.0, shift.double())
            old = self.counts[grow]
            target = (torch.arange(self.bins)[None, :] >> shift[:, None]).clamp(max=self.bins - 1)
            self.counts[grow] = torch.zeros_like(old).scatter_add_(1, target, old)
        self.counts.view(-1).index_add_(0, feature * self.bins + self.bin_of(feature, v, self.bins),
                                        torch.ones_like(feature))
        return (fresh | grow).nonzero().squeeze(1)

    def bin_of(self, feature: Int[Tensor, " n"], value: Float[Tensor, " n"], bins: int) -> Int[Tensor, " n"]:
        return (value.double() / self.scale[feature] * bins).long().clamp(0, bins - 1)

    def band_of(self, feature: Int[Tensor, " n"], value: Float[Tensor, " n"]) -> Int[Tensor, " n"]:
        return self.bin_of(feature, value, self.bands)

    def shown_bands(self, feature: int) -> int:
        """How many bands cover [0, max] (0 for a feature that never fired)."""
        if self.max[feature] == 0:
            return 0
        return int(self.band_of(torch.tensor([feature]), self.max[feature:feature + 1])) + 1

    def band_counts(self, feature: int) -> list[int]:
        per = self.counts[feature].reshape(self.bands, -1).sum(1)
        return per[: self.shown_bands(feature)].tolist()

    def band_edges(self, feature: int) -> list[float]:
        width = float(self.scale[feature]) / self.bands
        return [i * width for i in range(self.shown_bands(feature) + 1)]
