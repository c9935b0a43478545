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

from tcx.dictionaries.base import Activation, Dictionary, DictionaryConfig
from tcx.dictionaries.sparse import Codes, relu_codes, row_norms, weighted_l1
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

    def train_codes(self, x: Float[Tensor, "batch d_in"]) -> tuple[Codes, None]:
        return relu_codes(x, self.W_enc, self.b_enc), None  # sparse once few fire

    def penalty(self, z: Codes, pre: None) -> Float[Tensor, ""]:
        return weighted_l1(z, row_norms(self.W_dec))

    @property
    def sparsity_coeff(self) -> float:
        return self.cfg.l1_coeff
