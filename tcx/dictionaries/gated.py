"""Gated dictionary (Rajamanoharan et al. 2024, "Improving dictionary learning with gated SAEs").

Which features fire and how strongly are decided by two paths that share the encoder's directions:

    gate:      π_gate = x @ W_enc + b_enc                           fires where π_gate > 0
    magnitude: π_mag  = x @ (W_enc · exp(r_mag)) + b_mag            (W_mag[:, i] = e^{r_i} W_enc[:, i])
    z = 1[π_gate > 0] · ReLU(π_mag)

    loss = ||y - target||^2 + l1_coeff · Σ_i ReLU(π_gate)_i ||W_dec,i||
           + ||target - (ReLU(π_gate) @ W_dec' + b_dec')||^2      (' = frozen: trains only the gate)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from tcx.dictionaries.base import Activation, Dictionary, squared_error
from tcx.dictionaries.relu import ReLUConfig
from tcx.dictionaries.sparse import row_norms


@dataclass(kw_only=True)
class GatedConfig(ReLUConfig):
    """The ReLU kind's settings (l1_coeff weighs the gate's decoder-norm-weighted L1)."""

    l1_coeff: float = 15.0
    """The gate's L1 needs about 3x the ReLU kind's for a similar L0 (tuned on MiniLM)."""

    def build(self, d_in: int, d_out: int, seed: int = 0) -> GatedDictionary:
        return GatedDictionary(self, d_in, d_out, seed)


class GatedDictionary(Dictionary):
    cfg: GatedConfig

    def activation(self) -> Activation:
        return Activation("gated")

    def __init__(self, cfg: GatedConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__(cfg, d_in, d_out, seed)
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae))

    @torch.no_grad()
    def restart_(self, dead: Bool[Tensor, " d_sae"], x: Float[Tensor, "batch d_in"],
                 residual: Float[Tensor, "batch d_out"], rows: Int[Tensor, " dead"]) -> list[tuple[nn.Parameter, Any]]:
        """The magnitude path restarts with the gate: W_mag = W_enc (r_mag 0), b_mag 0."""
        changed = super().restart_(dead, x, residual, rows)
        self.r_mag[dead] = 0.0
        self.b_mag[dead] = 0.0
        return [*changed, (self.r_mag, dead), (self.b_mag, dead)]

    def gate(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return x @ self.W_enc + self.b_enc

    def magnitude(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (self.gate(x) > 0).to(x.dtype) * self.magnitude(x).relu()

    def train_codes(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Float[Tensor, "batch d_sae"]]:
        pi_gate = self.gate(x)
        return (pi_gate > 0).to(x.dtype) * self.magnitude(x).relu(), pi_gate

    def penalty(self, z: Tensor, pi_gate: Float[Tensor, "batch d_sae"]) -> Float[Tensor, ""]:
        """The gate's decoder-norm-weighted L1."""
        return (pi_gate.relu() * row_norms(self.W_dec)).sum(-1).mean()

    @property
    def sparsity_coeff(self) -> float:
        return self.cfg.l1_coeff

    def auxiliary(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
                  y: Float[Tensor, "batch d_out"], pi_gate: Float[Tensor, "batch d_sae"]) -> Float[Tensor, ""]:
        """The target reconstructed through the gate with a frozen decoder: trains only the gate."""
        return squared_error(pi_gate.relu() @ self.W_dec.detach() + self.b_dec.detach(), target)
