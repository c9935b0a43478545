"""What every dictionary kind shares: its config fields, parameters, and the output of a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from tcx.dictionaries.sparse import Codes, decode
from tcx.errors import ConfigError


class Activation(NamedTuple):
    """How a kind turns pre-activations `x @ W_enc + b_enc` into codes at inference, in the terms
    other tools use: relu, topk (k per row), jumprelu (`pre·1[pre > threshold]`), gated."""

    name: str
    k: int | None = None
    threshold: Float[Tensor, " d_sae"] | None = None


class StepOutput(NamedTuple):
    y: Float[Tensor, "batch d_out"]
    z: Codes
    """Dense `[batch, d_sae]`, or `SparseCodes` where the step ran sparse (see sparse.py)."""
    loss: Float[Tensor, ""]
    """What the optimiser minimises: mse + sparsity_scale * coefficient * sparsity + the weighted aux."""
    mse: Float[Tensor, ""]
    """Squared error summed over output dims, averaged over rows."""
    sparsity: Float[Tensor, ""]
    """The unweighted sparsity penalty: L1 (ReLU, gated's gate), L0 (JumpReLU); 0 for the TopK
    family, whose sparsity is k."""
    aux: Float[Tensor, ""] | None = None
    """The unweighted auxiliary loss that `loss` also holds: TopK's AuxK (dead latents on the
    residual), gated's reconstruction through the gate; None (logged as 0) for kinds that have none."""


@dataclass(kw_only=True)
class DictionaryConfig:
    input_site: str = "mlp_in"
    """Model site the dictionary reads (mlp_in for a transcoder)."""
    target_site: str = "mlp_out"
    """Model site it reconstructs: mlp_out for a transcoder; for an SAE, the same as input_site."""
    expansion_factor: float = 8.0
    d_sae: int | None = None
    """Number of features; overrides expansion_factor (d_sae = expansion_factor * d_in)."""
    normalize: bool = True
    """Scale input and target by fixed factors (set from the data at step 0) so that their mean
    squared norm equals their width: sparsity coefficients then carry over between models and
    layers. The dictionary's outputs are always in the model's units."""
    encoder_init_norm: float = 0.1
    """Norm of each encoder column at initialisation (in normalised units; the encoder starts along
    the decoder's transpose). 0.1 learns fastest; the TopK family keeps more latents alive at 1,
    Gao et al.'s encoder, the transpose of their unit decoder (README, "Dictionary kinds")."""

    def __post_init__(self) -> None:
        if self.expansion_factor <= 0:
            raise ConfigError(f"expansion_factor must be positive, got {self.expansion_factor}.")
        if not self.encoder_init_norm > 0:
            raise ConfigError(f"encoder_init_norm must be positive, got {self.encoder_init_norm}.")
        if self.d_sae is not None and self.d_sae <= 0:
            raise ConfigError(f"d_sae must be a positive integer, got {self.d_sae}.")

    @property
    def is_transcoder(self) -> bool:
        return self.input_site != self.target_site

    def width(self, d_in: int) -> int:
        return self.d_sae if self.d_sae is not None else max(1, round(self.expansion_factor * d_in))

    def build(self, d_in: int, d_out: int, seed: int = 0) -> Dictionary:
        raise NotImplementedError


class Dictionary(nn.Module):
    """`z = f(x)`, `y = z @ W_dec + b_dec`. A kind defines `encode`, and for training its `penalty`
    (with `sparsity_coeff`) and, if it has one, its `auxiliary` loss; `loss` puts them together.
    A kind whose training codes differ from `encode`'s (sparse codes, a straight-through estimator)
    also defines `train_codes`.

    Subclasses work in normalised units (x·input_scale, target·target_scale); `forward`,
    `encode_decode` and `reconstruct` take and return the model's units.

    Kinds whose sparsity does not depend on the decoder's scale (TopK family) set `unit_decoder`:
    their decoder rows are kept at unit norm and the gradient along each row is removed first.
    """

    unit_decoder = False
    supports_auxk = False
    """Dead latents are revived by AuxK's auxiliary loss (trainer.auxk)."""
    resamples = True
    """Dead features are restarted by trainer.resample_every_n_tokens (`restart_`)."""

    def __init__(self, cfg: DictionaryConfig, d_in: int, d_out: int, seed: int = 0):
        super().__init__()
        self.cfg, self.d_in, self.d_out = cfg, d_in, d_out
        self.d_sae = cfg.width(d_in)
        gen = torch.Generator().manual_seed(seed)
        # Decoder rows: random directions of norm 0.1; encoder starts as the decoder's transpose
        # where shapes allow (Anthropic, "Circuits Updates", April 2024), else random, with its
        # columns at `encoder_init_norm`.
        raw = torch.randn(self.d_sae, d_out, generator=gen)
        norms = raw.norm(dim=1, keepdim=True)
        W_dec = 0.1 * raw / norms
        W_enc = (cfg.encoder_init_norm * raw / norms).T if d_in == d_out else (
            cfg.encoder_init_norm * torch.randn(d_in, self.d_sae, generator=gen) / d_in**0.5)
        self.W_enc = nn.Parameter(W_enc.contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_out]
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("target_scale", torch.tensor(1.0))
        if self.unit_decoder:
            self.after_optimizer_step()

    def encode(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        raise NotImplementedError

    def activation(self) -> Activation:
        """This kind's inference activation, for exporters (see `Activation`)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its activation.")

    def decode(self, z: Codes, x: Float[Tensor, "batch d_in"] | None = None
               ) -> Float[Tensor, "batch d_out"]:
        """`x` is for kinds with a path that bypasses the features (skip transcoder)."""
        return decode(z, self.W_dec, self.b_dec)

    # -- the training step, in normalised units ----------------------------------------------
    def loss(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
             sparsity_scale: float = 1.0) -> StepOutput:
        """encode -> decode -> `mse + sparsity_scale·sparsity_coeff·penalty + aux_coeff·auxiliary`."""
        z, pre = self.train_codes(x)
        y = self.decode(z, x)
        mse = squared_error(y, target)
        loss, sparsity = mse, self.penalty(z, pre)
        if sparsity is None:
            sparsity = mse.new_zeros(())
        else:
            loss = loss + sparsity_scale * self.sparsity_coeff * sparsity
        aux = self.auxiliary(x, target, y, pre)
        if aux is not None:
            loss = loss + self.aux_coeff * aux
        return StepOutput(y, z, loss, mse, sparsity, aux)

    def train_codes(self, x: Float[Tensor, "batch d_in"]) -> tuple[Codes, Float[Tensor, "batch d_sae"] | None]:
        """The codes of a training step, and what the penalty and auxiliary loss read besides them
        (the kind's pre-activations, or None)."""
        return self.encode(x), None

    def penalty(self, z: Codes, pre: Tensor | None) -> Float[Tensor, ""] | None:
        """The unweighted sparsity penalty (logged as `sparsity`); None for kinds whose sparsity is
        structural (TopK's k)."""
        return None

    @property
    def sparsity_coeff(self) -> float:
        """The penalty's weight (the config's l1_coeff, l0_coeff, ...)."""
        return 0.0

    def auxiliary(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
                  y: Float[Tensor, "batch d_out"], pre: Tensor | None) -> Float[Tensor, ""] | None:
        """An unweighted auxiliary loss the step also minimises (logged as `aux`), or None."""
        return None

    aux_coeff = 1.0
    """The auxiliary loss's weight."""

    # -- in the model's units ---------------------------------------------------------------
    def forward(self, x: Float[Tensor, "batch d_in"], target: Float[Tensor, "batch d_out"],
                sparsity_scale: float = 1.0) -> StepOutput:
        out = self.loss(x * self.input_scale, target * self.target_scale, sparsity_scale)
        return out._replace(y=out.y / self.target_scale)

    def encode_decode(self, x: Float[Tensor, "batch d_in"]
                      ) -> tuple[Float[Tensor, "batch d_sae"], Float[Tensor, "batch d_out"]]:
        x = x * self.input_scale
        z = self.encode(x)
        return z, self.decode(z, x) / self.target_scale

    def reconstruct(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_out"]:
        return self.encode_decode(x)[1]

    # -- units --------------------------------------------------------------------------------
    @property
    def in_model_units(self) -> bool:
        """Whether the parameters act on raw model activations (both scales are 1)."""
        return bool(self.input_scale == 1) and bool(self.target_scale == 1)

    @torch.no_grad()
    def rescale_(self, input_scale: float | Tensor = 1.0, target_scale: float | Tensor = 1.0) -> Dictionary:
        """Change the normalisation scales in place, compensating the weights so that no output
        changes: `rescale_()` folds them into the weights (model units, what every other tool
        reads), `rescale_(s_in, s_t)` unfolds into training units. Pre-activations, and so b_enc
        and thresholds, are unchanged: x·s·W_enc = x·s'·(W_enc·s/s')."""
        a = self.input_scale / torch.as_tensor(input_scale, dtype=self.input_scale.dtype)
        b = torch.as_tensor(target_scale, dtype=self.target_scale.dtype) / self.target_scale
        self.W_enc.mul_(a.to(self.W_enc.dtype))
        self.W_dec.mul_(b.to(self.W_dec.dtype))
        self.b_dec.mul_(b.to(self.b_dec.dtype))
        self.rescale_extra_(a, b)
        self.input_scale.fill_(input_scale)
        self.target_scale.fill_(target_scale)
        return self

    def rescale_extra_(self, input_factor: Tensor, target_factor: Tensor) -> None:
        """Kinds with parameters outside W_enc/W_dec/b_dec (skip transcoder) compensate them here:
        a parameter that multiplies the input gets `input_factor`, one that makes the output
        `target_factor`."""

    @torch.no_grad()
    def init_from_data(self, x: Float[Tensor, "rows d_in"], target: Float[Tensor, "rows d_out"]) -> None:
        """Fix the normalisation scales, and start b_dec at the mean target so the features
        only explain deviations from it."""
        if self.cfg.normalize:
            self.input_scale.copy_((self.d_in / x.pow(2).sum(-1).mean()).sqrt())
            self.target_scale.copy_((self.d_out / target.pow(2).sum(-1).mean()).sqrt())
        self.b_dec.copy_(target.mean(0) * self.target_scale)

    def lr_scales(self) -> dict[str, float]:
        """Parameters (by name) that learn at a multiple of the run's lr; the rest learn at the lr."""
        return {}

    @torch.no_grad()
    def restart_(self, dead: Bool[Tensor, " d_sae"], x: Float[Tensor, "batch d_in"],
                 residual: Float[Tensor, "batch d_out"], rows: Int[Tensor, " dead"]) -> list[tuple[nn.Parameter, Any]]:
        """Restart the `dead` features on `rows` of a batch (one per feature, chosen where the
        reconstruction is worst; `x`, `residual = target - output` in model units): decoder row along
        the residual at the live rows' mean norm, encoder column along the input at 0.2 of the live
        columns' (after Bricken et al. 2023), b_enc 0. Returns each (parameter, index) it changed,
        whose optimiser moments the caller clears. Kinds with more per-feature parameters extend it."""
        alive = ~dead
        enc_norm = self.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        dec_norm = self.W_dec[alive].norm(dim=1).mean() if alive.any() else torch.tensor(0.1)
        self.W_dec[dead] = nn.functional.normalize(residual[rows], dim=-1).to(self.W_dec.dtype) * dec_norm
        self.W_enc[:, dead] = (nn.functional.normalize(x[rows], dim=-1) * 0.2 * enc_norm).T.to(self.W_enc.dtype)
        self.b_enc[dead] = 0.0
        return [(self.W_dec, dead), (self.W_enc, (slice(None), dead)), (self.b_enc, dead)]

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        """Unit decoders: drop the gradient component along each row (it only changes the norm)."""
        if self.unit_decoder and self.W_dec.grad is not None:
            rows = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
            self.W_dec.grad -= (self.W_dec.grad * rows).sum(1, keepdim=True) * rows

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)


def squared_error(y: Tensor, target: Tensor) -> Tensor:
    return (y - target).pow(2).sum(-1).mean()
