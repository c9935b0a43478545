"""scripts/greater_than.py and scripts/year_probe.py: metrics by hand, ablation against the model,
the probe's balance and fit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.test_evaluation import copy_mlp, place


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gt, probe = script("greater_than"), script("year_probe")


def test_metric_on_hand_made_probabilities():
    task = gt.Task(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 5]), torch.arange(10), ["a", "b"])
    probs = torch.full((2, 10), 0.01)
    probs[0, 4] += 0.9   # start 173_: '4' is valid
    probs[1, 2] += 0.9   # start 175_: '2' is not
    m = gt.metrics(probs, task)
    # prompt 0: P(d >= 3) 0.97, P(d < 3) 0.03; prompt 1: P(d >= 5) 0.05, P(d < 5) 0.95
    assert m["prob_diff"] == pytest.approx(((0.97 - 0.03) + (0.05 - 0.95)) / 2)
    assert m["accuracy"] == 0.5 and m["p_equal"] == pytest.approx(0.01)
    assert m["logit_diff"] == pytest.approx(0.0)  # logit(3)-logit(2) and logit(5)-logit(4) are both 0


def test_a_member_folder_with_an_equals_sign_is_an_argument_not_an_option():
    """The README's `ablate <sweep dir>/0/layer=0 1738,343 tens=3 n=400` (tcx names members key=value)."""
    opts, args = gt.parse(["ablate", "out/0/layer=0", "1738,343", "tens=3", "n=400"])
    assert args == ["ablate", "out/0/layer=0", "1738,343"] and opts == {"tens": "3", "n": "400"}


def test_ablating_every_feature_of_a_copied_mlp_leaves_only_its_bias(make_cfg, tmp_path):
    cfg = make_cfg()
    run = place(cfg, tmp_path / "copy", copy_mlp, d_sae=256)
    lm = gt.load("tiny")
    task = gt.build_task(lm, n=16)
    assert task.tokens.shape[0] == 16 and (task.tens >= 1).all()
    out = gt.ablate(lm, task, str(run), list(range(256)))
    assert out["spliced_none_zeroed"] == pytest.approx(out["clean"], abs=1e-6)  # the error term is kept
    # a ReLU transcoder copying the MLP with all its features zeroed: the MLP writes its bias alone
    bias = lm.bridge.b_out[cfg.layer].detach()
    probs = gt.run(lm, task, [(f"blocks.{cfg.layer}.hook_mlp_out", lambda act, hook: bias.expand_as(act).clone())])
    assert out["ablated"] == pytest.approx(gt.metrics(probs, task), abs=1e-5)
    assert out["ablated"] != pytest.approx(out["clean"], abs=1e-3)


def test_year_pairs_give_a_probe_of_the_second_year_alone_nothing():
    pairs = probe.build_pairs(list(range(1700, 1760)), seed=0)
    assert probe.balanced(pairs) and len(pairs) == 2 * 58
    assert all((a < b) == bool(label) for a, b, label in pairs)
    assert not probe.balanced(pairs[1:])


def test_the_probe_fit_recovers_a_separating_direction_in_raw_units():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 8, generator=g, dtype=torch.float64) * torch.arange(1, 9) + 3.0  # scaled, offset
    u = torch.randn(8, generator=g, dtype=torch.float64)
    y = ((x - 3.0) @ u > 0).double()
    direction, bias = probe.fit(x[:400], y[:400])
    assert probe.accuracy(x[400:], y[400:], direction, bias) > 0.95
    assert probe.accuracy(x[400:], y[400:], -direction, -bias) < 0.05
