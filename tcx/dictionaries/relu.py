"""ReLU dictionary with decoder-norm-weighted L1: the transcoder (and SAE) of arXiv 2406.11944.

    z = ReLU(x @ W_enc + b_enc)        y = z @ W_dec + b_dec
    loss = ||y - target||^2 + l1_coeff * sum_i z_i * ||W_dec[i]||

Weighting |z_i| by its decoder norm stops the optimiser from shrinking z while growing the
decoder, so no decoder normalisation step is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.dictionaries.base import Activation, Dictionary, DictionaryConfig, StepOutput, squared_error
from tcx.dictionaries.sparse import relu_codes, weighted_l1
from tcx.errors import ConfigError


@dataclass(kw_only=True)
class ReLUConfig(DictionaryConfig):
    l1_coeff: float = 5.0
    """Weight of the L1 penalty; larger is sparser (lower L0) and less faithful."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coeff >= 0:
            raise ConfigError(f"l1_coeff must be a non-negative number, got {self.l1_coeff}.")

    def build(self, d_in: int, d_out: int, seed: int = 0) -> ReLUDictionary:
        return ReLUDictionary(self, d_in, d_out, seed)


class ReLUDictionary(Dictionary):
    cfg: ReLUConfig

    def activation(self) -> Activation:
        return Activation("relu")

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return torch.relu(x @ self.W_enc + self.b_enc)

    def loss(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
             sparsity_scale: float = 1.0) -> StepOutput:
        z = relu_codes(x, self.W_enc, self.b_enc)
        y = self.decode(z)
        mse = squared_error(y, target)
        l1 = weighted_l1(z, self.W_dec.norm(dim=1))
        return StepOutput(y, z, mse + sparsity_scale * self.cfg.l1_coeff * l1, mse, l1)
