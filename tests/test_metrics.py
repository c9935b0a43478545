"""Metrics on hand-made activations with known answers."""

import torch

from tcx.evaluation import metrics


def test_l0_counts_nonzero_features_per_row():
    z = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
    assert metrics.l0(z).item() == 1.5


def test_fvu_is_zero_for_perfect_one_for_mean_and_two_for_sign_flip():
    t = torch.tensor([[1.0, 2.0], [3.0, -2.0], [-1.0, 0.0]])
    assert metrics.fvu(t, t).item() == 0.0
    assert abs(metrics.fvu(t.mean(0).expand_as(t), t).item() - 1.0) < 1e-6
    centred = t - t.mean(0)
    assert abs(metrics.fvu(t.mean(0) - centred, t).item() - 4.0) < 1e-6


def test_dead_fraction_uses_the_window():
    since = torch.tensor([0, 10, 100, 1000])
    assert metrics.dead_fraction(since, 100) == 0.5
    assert metrics.dead_fraction(since, 5) == 0.75
