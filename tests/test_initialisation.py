"""Where a dictionary starts: the encoder along the decoder's transpose, at `encoder_init_norm`.

The default (0.1) learns fastest; the TopK family at 0.1 loses most of its latents in its first
steps when the inputs share a large mean (as LayerNorm outputs do), their pre-activations below 0
everywhere, and keeps them at 1 (Gao et al. 2024's encoder, the transpose of their unit decoder).
AuxK with its straight-through ReLU, a short window and its weight of 1 (the defaults) brings most
of them back; at Gao et al.'s weight of 1/32 it barely moves them."""

from __future__ import annotations

import functools

import pytest
import torch

from tcx.dictionaries.relu import ReLUConfig
from tcx.dictionaries.topk import TopKConfig
from tcx.evaluation import metrics


@pytest.mark.parametrize("cfg", [ReLUConfig, TopKConfig])
@pytest.mark.parametrize("d_out", [16, 24])
def test_the_encoder_starts_at_its_configured_norm(cfg, d_out):
    for norm in (0.1, 1.0, 3.0):
        d = cfg(d_sae=64, encoder_init_norm=norm).build(16, d_out, seed=3)
        if d_out == 16:  # along the decoder's rows: the decoder's transpose, rescaled
            unit = d.W_dec / d.W_dec.norm(dim=1, keepdim=True)
            assert torch.allclose(d.W_enc.T, norm * unit, atol=1e-6)
        else:  # random columns of that norm on average
            assert d.W_enc.norm(dim=0).mean().item() == pytest.approx(norm, rel=0.1)
    decoder_norms = cfg(d_sae=64).build(16, 16).W_dec.norm(dim=1)
    assert torch.allclose(decoder_norms, torch.tensor(1.0 if cfg is TopKConfig else 0.1))


@functools.cache  # (deterministic: the default's run serves both tests that read it)
def _train_topk(encoder_init_norm: float, steps: int = 150, auxk_window: int | None = None,
                aux_coeff: float = 1.0) -> tuple[float, float]:
    """A TopK transcoder on inputs whose shared mean (norm 0.6) is nearly as large as their spread
    (0.8), as MiniLM's MLP inputs (6.2 and 11.6); (unfired fraction, FVU). With `auxk_window`, AuxK
    on the latents silent for that many rows, as the AuxK callback marks them."""
    g = torch.Generator().manual_seed(0)
    d_in = 32
    mean = torch.randn(d_in, generator=g)
    mean = 0.6 * mean / mean.norm()
    A = torch.randn(d_in, 4 * d_in, generator=g) / d_in**0.5
    B = torch.randn(4 * d_in, d_in, generator=g) / (2 * d_in) ** 0.5

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = 0.8 * torch.randn(n, d_in, generator=g) / d_in**0.5 + mean
        return x, torch.relu(x @ A) @ B

    d = TopKConfig(d_sae=256, k=8, encoder_init_norm=encoder_init_norm, aux_coeff=aux_coeff).build(d_in, d_in, seed=0)
    d.init_from_data(*batch(4096))
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    since = torch.zeros(d.d_sae, dtype=torch.long)
    for step in range(steps):
        if auxk_window is not None:
            d.dead.copy_(since >= auxk_window)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * min(1.0, (step + 1) / 20)
        x, y = batch(256)
        out = d.loss(x * d.input_scale, y * d.target_scale)
        since = torch.where(metrics.fired(out.z), 0, since + len(x))
        opt.zero_grad()
        out.loss.backward()
        d.before_optimizer_step()
        opt.step()
        d.after_optimizer_step()
    x, y = batch(8192)
    with torch.no_grad():
        z, target = d.encode(x * d.input_scale), y * d.target_scale
        fvu = metrics.fvu(d.decode(z), target)
    return 1 - metrics.fired(z).float().mean().item(), fvu.item()


def test_a_topk_encoder_at_unit_norm_keeps_the_latents_the_default_loses():
    unfired_default, fvu_default = _train_topk(0.1)
    unfired_unit, fvu_unit = _train_topk(1.0)
    assert unfired_default > 0.5 and unfired_unit < 0.05, (unfired_default, unfired_unit)
    assert fvu_default < fvu_unit  # the price: the larger encoder learns more slowly


def test_auxk_brings_back_the_latents_the_default_loses():
    unfired_without, _ = _train_topk(0.1)
    unfired_auxk, _ = _train_topk(0.1, auxk_window=2560)  # 10 steps' rows
    unfired_gao, _ = _train_topk(0.1, auxk_window=2560, aux_coeff=1 / 32)
    assert unfired_without > 0.8 and unfired_auxk < 0.35 and unfired_gao > 0.8, (
        unfired_without, unfired_auxk, unfired_gao)
