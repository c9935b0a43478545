"""Skip transcoder (Paulo et al. 2025, "Transcoders beat sparse autoencoders"): a TopK transcoder
plus a dense linear path, `y = z @ W_dec + b_dec + x @ W_skip`. The skip takes the part of the MLP
that is linear, leaving the features for what is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from tcx.dictionaries.sparse import Codes
from tcx.dictionaries.topk import TopKConfig, TopKDictionary


@dataclass(kw_only=True)
class SkipTranscoderConfig(TopKConfig):
    def build(self, d_in: int, d_out: int, seed: int = 0) -> SkipTranscoder:
        self.check_width(d_in)
        return SkipTranscoder(self, d_in, d_out, seed)


class SkipTranscoder(TopKDictionary):
    cfg: SkipTranscoderConfig

    def __init__(self, cfg: SkipTranscoderConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__(cfg, d_in, d_out, seed)
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out))

    def decode(self, z: Codes, x: Tensor | None = None) -> Tensor:
        y = super().decode(z)
        return y if x is None else y + x @ self.W_skip

    def rescale_extra_(self, input_factor: Tensor, target_factor: Tensor) -> None:
        self.W_skip.mul_((input_factor * target_factor).to(self.W_skip.dtype))

    @torch.no_grad()
    def fit_skip_(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"]) -> None:
        """Set W_skip and b_dec to the least-squares linear map from x to what z does not explain."""
        residual = target - self.encode(x) @ self.W_dec
        ones = torch.ones(len(x), 1, dtype=x.dtype, device=x.device)
        solution = torch.linalg.lstsq(torch.cat([x, ones], 1).double(), residual.double()).solution
        self.W_skip.copy_(solution[:-1])
        self.b_dec.copy_(solution[-1])
