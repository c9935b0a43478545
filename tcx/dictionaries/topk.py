"""TopK dictionary (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    z = TopK_k(ReLU(x @ W_enc + b_enc))      y = z @ W_dec + b_dec      loss = ||y - target||^2

Exactly k features fire per row, so sparsity needs no penalty. The decoder is kept at unit norm.
AuxK: latents that have not fired for a while (`trainer.auxk_window_tokens`) are asked to explain the
residual with their own top `aux_k`, which keeps them learning (switch off with `aux_coeff=0` or
`trainer.auxk=false`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from tcx.dictionaries.base import Activation, Dictionary, DictionaryConfig, squared_error
from tcx.dictionaries.sparse import Codes, Rule, decode, encode_sparse, pre_activations, sparse_enabled, top_k
from tcx.errors import ConfigError


@dataclass(kw_only=True)
class TopKConfig(DictionaryConfig):
    k: int = 32
    """Active features per row."""
    aux_k: int = 256
    """Dead latents used by the AuxK loss."""
    aux_straight_through: bool = True
    """AuxK's ReLU passes its gradient to picks below 0 too, so a latent below 0 on every row still
    learns; false: Gao et al.'s and sparsify's AuxK, which cannot reach such a latent."""
    aux_coeff: float = 1.0
    """Weight of the AuxK loss. 1, not Gao et al.'s 1/32: Adam scales a dead latent's steps by the
    gradients it had alive, which the AuxK gradient must match to move it (README, "Dictionary kinds")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k <= 0:
            raise ConfigError(f"k must be a positive integer, got {self.k}.")
        if self.aux_k < 0 or self.aux_coeff < 0:
            raise ConfigError("aux_k and aux_coeff must be non-negative.")

    def check_width(self, d_in: int) -> None:
        """k is checked once the width is known (the model's d_in)."""
        if self.k > self.width(d_in):
            raise ConfigError(f"k={self.k} (dictionary.k) is more than the {self.width(d_in)} features "
                              "(dictionary.d_sae, or expansion_factor × the model's width).")

    def build(self, d_in: int, d_out: int, seed: int = 0) -> TopKDictionary:
        self.check_width(d_in)
        return TopKDictionary(self, d_in, d_out, seed)


def topk_rows(pre: Float[Tensor, "batch d_sae"], k: int) -> Float[Tensor, "batch d_sae"]:
    """Keep each row's k largest (positive) entries, zero the rest. (ReLU on the k kept, not on the
    whole row: the same codes and gradients, a `[batch, d_sae]` pass fewer each way.)"""
    values, index = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, index, values.relu())


def dead_top_k(pre: Float[Tensor, "batch d_sae"], dead: Bool[Tensor, " d_sae"], k: int,
               straight_through: bool = True) -> Float[Tensor, "batch d_sae"]:
    """AuxK's codes: each row's k largest pre-activations among the `dead` latents, ReLU'd forward;
    `straight_through`, every pick gets its gradient, below 0 too. Picks beyond the dead (k larger
    than their number) are codes of 0 with no gradient."""
    picked, index = pre.masked_fill(~dead, float("-inf")).topk(k, dim=-1, sorted=False)
    picked = picked.masked_fill(picked.isneginf(), 0.0)
    values = picked + (picked.relu() - picked).detach() if straight_through else picked.relu()
    return torch.zeros_like(pre).scatter(-1, index, values)  # (ST: exactly relu's values, p + 0 or p - p)


class TopKDictionary(Dictionary):
    cfg: TopKConfig
    unit_decoder = True
    supports_auxk = True
    resamples = False  # AuxK revives its dead latents

    def __init__(self, cfg: TopKConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__(cfg, d_in, d_out, seed)
        self.register_buffer("dead", torch.zeros(self.d_sae, dtype=torch.bool), persistent=False)
        """Set by the AuxK callback: latents that have not fired for the dead window."""

    def pre_activation(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        # (one addmm, as the sparse step's: under autocast both are bf16, bias included)
        return torch.addmm(self.b_enc, x.reshape(-1, self.d_in), self.W_enc).view(*x.shape[:-1], self.d_sae)

    def activation(self) -> Activation:
        return Activation("topk", k=self.cfg.k)

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        return self.select(self.pre_activation(x))

    def aux_loss(self, x: Tensor, pre: Tensor, residual: Tensor, dead: Bool[Tensor, " d_sae"]) -> Tensor:
        """How well the top `aux_k` dead latents explain what the live ones missed (normalised).
        Their ReLU is straight-through (`aux_straight_through`): a latent below 0 on every row still
        learns to rise where its decoder row points along the residual."""
        if self.cfg.aux_coeff == 0 or self.cfg.aux_k == 0:
            return pre.new_zeros(())
        if torch.compiler.is_compiling():  # a captured step cannot read the count back
            return self.aux_loss_unsynced(pre, residual, dead)
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        k = min(self.cfg.aux_k, n_dead)
        if sparse_enabled(x.device):  # a dictionary of the dead latents alone
            cols = dead.nonzero().squeeze(1)
            z = encode_sparse(x, self.W_enc[:, cols], self.b_enc[cols], top_k(k), pre[:, cols],
                              straight_through=self.cfg.aux_straight_through)
            explained = decode(z, self.W_dec[cols], torch.zeros_like(self.b_dec))
        else:
            explained = dead_top_k(pre, dead, k, self.cfg.aux_straight_through) @ self.W_dec
        return normalised_error(explained, residual)

    def aux_loss_unsynced(self, pre: Tensor, residual: Tensor, dead: Bool[Tensor, " d_sae"]) -> Tensor:
        """`aux_loss` of dense codes without reading the number of dead latents back: always the top
        `aux_k`. Where fewer are dead, the extra picks are live latents, codes of 0 with no gradient:
        the same codes, loss and gradients, at the cost of the whole top-k while none are dead (then
        the loss is 0, as the synced form's)."""
        k = min(self.cfg.aux_k, self.d_sae)
        explained = dead_top_k(pre, dead, k, self.cfg.aux_straight_through) @ self.W_dec
        return torch.where(dead.any(), normalised_error(explained, residual), 0.0)

    def train_codes(self, x: Float[Tensor, "batch d_in"]) -> tuple[Codes, Float[Tensor, "batch d_sae"]]:
        if sparse_enabled(x.device):
            pre = pre_activations(x, self.W_enc, self.b_enc)
            return encode_sparse(x, self.W_enc, self.b_enc, self.rule(), pre), pre
        pre = self.pre_activation(x)
        return self.select(pre), pre

    def auxiliary(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
                  y: Float[Tensor, "batch d_out"], pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, ""]:
        """AuxK while training (0 in evaluation)."""
        if not self.training:
            return y.new_zeros(())
        return self.aux_loss(x, pre, (target - y).detach(), self.dead)

    @property
    def aux_coeff(self) -> float:
        return self.cfg.aux_coeff

    def select(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """Which pre-activations fire: the family's one difference (TopK: each row's k largest)."""
        return topk_rows(pre, self.cfg.k)

    def rule(self) -> Rule:
        """`select` for sparse training steps."""
        return top_k(self.cfg.k)


def normalised_error(explained: Float[Tensor, "batch d_out"], residual: Float[Tensor, "batch d_out"]
                     ) -> Float[Tensor, ""]:
    """AuxK's loss: the squared error of `explained` against the residual, over the residual's."""
    return squared_error(explained, residual) / residual.pow(2).sum(-1).mean().clamp_min(1e-8)
