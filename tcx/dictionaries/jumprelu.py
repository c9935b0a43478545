"""JumpReLU dictionary (Rajamanoharan et al. 2024): each feature has a learned threshold θ_i.

    z_i = pre_i · H(pre_i - θ_i)        loss = ||y - target||^2 + l0_coeff · Σ_i H(pre_i - θ_i)

H has no useful gradient, so θ learns through a straight-through estimator: the derivative of H
at θ is replaced by a rectangle kernel of width `bandwidth` (the paper's pseudo-derivative).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from tcx.dictionaries.base import Activation, Dictionary, DictionaryConfig
from tcx.errors import ConfigError


@dataclass(kw_only=True)
class JumpReLUConfig(DictionaryConfig):
    l0_coeff: float = 1.0
    """Weight of the L0 penalty (features firing per row)."""
    bandwidth: float = 0.1
    """Width of the kernel that stands in for the step function's derivative."""
    init_threshold: float = 0.4
    """θ before any data is seen, and for every feature when `init_firing_rate` is null."""
    init_firing_rate: float | None = 0.1
    """Start each θ_i at the quantile of feature i's pre-activations on the first training buffer
    above which it fires on this share of rows. A feature that never fires gets no gradient, and a
    fixed θ lands wherever the data's scale puts it (0.4 is ~4σ out on MiniLM: 93% never fired)."""
    threshold_lr_scale: float = 30.0
    """log θ learns at this multiple of the lr. Adam moves log θ by about lr per step, while the
    encoder's MSE gradient grows the pre-activations much faster: at 1 the default on MiniLM ended
    at L0 1,213 of 3,072 after 300k tokens; at 10, 482; at 30, 44 (FVU 0.21); at 100, 11."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.l0_coeff < 0:
            raise ConfigError(f"l0_coeff must be non-negative, got {self.l0_coeff}.")
        if self.threshold_lr_scale <= 0:
            raise ConfigError(f"threshold_lr_scale must be positive, got {self.threshold_lr_scale}.")
        if self.bandwidth <= 0 or self.init_threshold <= 0:
            raise ConfigError("bandwidth and init_threshold must be positive.")
        if self.init_firing_rate is not None and not 0 < self.init_firing_rate < 1:
            raise ConfigError(f"init_firing_rate must lie in (0, 1) or be null, got {self.init_firing_rate}.")

    def build(self, d_in: int, d_out: int, seed: int = 0) -> JumpReLUDictionary:
        return JumpReLUDictionary(self, d_in, d_out, seed)


def _kernel(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype) / bandwidth


class _JumpReLU(torch.autograd.Function):
    """pre·H(pre-θ): the usual gradient for pre, the kernel pseudo-derivative for θ."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        d_pre = grad * (pre > threshold).to(pre.dtype)
        d_theta = -(threshold * _kernel(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return d_pre, d_theta, None


class _Step(torch.autograd.Function):
    """H(pre-θ), with the kernel pseudo-derivative for θ (pre gets none, as in the paper)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        d_theta = -(_kernel(pre, threshold, ctx.bandwidth) * grad).sum(0)
        return None, d_theta, None


class JumpReLUDictionary(Dictionary):
    cfg: JumpReLUConfig

    def __init__(self, cfg: JumpReLUConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__(cfg, d_in, d_out, seed)
        self.log_threshold = nn.Parameter(torch.full((self.d_sae,), math.log(cfg.init_threshold)))

    def lr_scales(self) -> dict[str, float]:
        return {"log_threshold": self.cfg.threshold_lr_scale}

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_from_data(self, x: Float[Tensor, "rows d_in"], target: Float[Tensor, "rows d_out"]) -> None:
        super().init_from_data(x, target)
        if self.cfg.init_firing_rate is None:
            return
        self.log_threshold.copy_(self._log_thresholds(x))

    def _log_thresholds(self, x: Float[Tensor, "rows d_in"], features: Tensor | slice = slice(None)) -> Tensor:
        """θ at the quantile of each feature's pre-activations on `x` (model units) that makes it
        fire on `init_firing_rate` of the rows; a feature positive on fewer rows than that fires
        wherever it is positive at all."""
        pre = self.pre_activation(x[:8192] * self.input_scale)[:, features]  # [rows, feature]: 8k rows suffice
        k = max(1, min(len(pre), round((1 - self.cfg.init_firing_rate) * len(pre))))
        q = pre.kthvalue(k, dim=0).values
        floor = torch.tensor(self.cfg.bandwidth / 100, dtype=q.dtype)
        return q.maximum(floor).log().to(self.log_threshold.dtype)

    @torch.no_grad()
    def restart_(self, dead: Bool[Tensor, " d_sae"], x: Float[Tensor, "batch d_in"],
                 residual: Float[Tensor, "batch d_out"], rows: Int[Tensor, " dead"]) -> list[tuple[nn.Parameter, Any]]:
        """A restarted feature's threshold is set as at initialisation, on this batch (its old θ
        belonged to the old direction); with `init_firing_rate` null it keeps the configured start."""
        changed = super().restart_(dead, x, residual, rows)
        self.log_threshold[dead] = (self._log_thresholds(x, dead) if self.cfg.init_firing_rate is not None
                                    else math.log(self.cfg.init_threshold))
        return [*changed, (self.log_threshold, dead)]

    def activation(self) -> Activation:
        return Activation("jumprelu", threshold=self.threshold.detach().clone())

    def pre_activation(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return (x @ self.W_enc + self.b_enc).relu()

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return _JumpReLU.apply(self.pre_activation(x), self.threshold, self.cfg.bandwidth)

    def train_codes(self, x: Float[Tensor, "batch d_in"]) -> tuple[Tensor, Float[Tensor, "batch d_sae"]]:
        pre = self.pre_activation(x)
        return _JumpReLU.apply(pre, self.threshold, self.cfg.bandwidth), pre

    def penalty(self, z: Tensor, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, ""]:
        """L0, with the kernel pseudo-derivative for θ."""
        return _Step.apply(pre, self.threshold, self.cfg.bandwidth).sum(-1).mean()

    @property
    def sparsity_coeff(self) -> float:
        return self.cfg.l0_coeff
