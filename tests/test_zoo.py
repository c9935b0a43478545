"""Every dictionary kind against the math of its paper, and a new kind added with no tcx file touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tcx.config import build_node
from tcx.dictionaries.io import load_dictionary, save_dictionary
from tcx.dictionaries.sparse import as_dense
from tcx.training.callbacks import AuxK, DeadFeatures, Resample
from tcx.training.run import train
from tests.conftest import ONCE_IN_CI
from tests.test_configs import options

GEN = torch.Generator().manual_seed(0)


def kind(make_cfg, name: str, *overrides: str, d_in: int = 16, d_out: int = 16, seed: int = 0):
    cfg = build_node(make_cfg(f"dictionary={name}", *overrides).dictionary, "dictionary")
    return cfg.build(d_in, d_out, seed=seed)


def test_topk_fires_exactly_k_per_token(make_cfg):
    d = kind(make_cfg, "topk", "dictionary.k=5")
    x = torch.randn(300, 16, generator=GEN)
    z = d.encode(x)
    assert torch.equal((z != 0).sum(-1), torch.full((300,), 5))
    assert (z >= 0).all()


def test_batchtopk_fires_k_per_row_on_average_and_its_threshold_reproduces_the_rate(make_cfg):
    d = kind(make_cfg, "batchtopk", "dictionary.k=4", "dictionary.threshold_momentum=0.9")
    d.train()
    for _ in range(200):
        x = torch.randn(256, 16, generator=GEN)
        out = d(x, x)
        z = as_dense(out.z)
        assert int((z != 0).sum()) == 4 * 256
        assert not torch.equal((z != 0).sum(-1), torch.full((256,), 4))  # per batch, not per row
    d.eval()
    held_out = torch.randn(4096, 16, generator=GEN)
    l0 = (d.encode(held_out) != 0).sum(-1).float().mean().item()
    assert abs(l0 - 4) < 0.4, l0


def test_jumprelu_zeroes_below_threshold_and_trains_the_threshold(make_cfg):
    d = kind(make_cfg, "jumprelu", "dictionary.bandwidth=0.5")
    with torch.no_grad():
        d.log_threshold.fill_(0.0)  # θ = 1
    x = torch.randn(512, 16, generator=GEN) * 3
    pre = d.pre_activation(x)
    z = d.encode(x)
    assert torch.equal(z[pre <= 1.0], torch.zeros_like(z[pre <= 1.0]))
    assert torch.equal(z[pre > 1.0], pre[pre > 1.0])
    out = d(x, x)
    out.loss.backward()
    assert d.log_threshold.grad is not None and d.log_threshold.grad.abs().sum() > 0
    # the L0 penalty alone pushes thresholds up (fewer features fire)
    d.zero_grad()
    d(x, x).sparsity.backward()
    assert (d.log_threshold.grad <= 0).all() and (d.log_threshold.grad < 0).any()


def test_jumprelu_thresholds_start_where_each_feature_fires_on_the_configured_share(make_cfg):
    # activations far smaller than the fixed init_threshold (0.4): with θ fixed nothing would fire
    d = kind(make_cfg, "jumprelu", "dictionary.init_firing_rate=0.1", d_in=16, d_out=16)
    x = torch.randn(4000, 16, generator=GEN) * 0.01
    assert (d.encode(x) != 0).float().mean() == 0  # the fixed θ: dead
    d.init_from_data(x, x)
    rate = (d.encode(x * d.input_scale) != 0).float().mean(0)  # [d_sae]
    positive = (d.pre_activation(x * d.input_scale) > 0).float().mean(0)
    expected = torch.minimum(positive, torch.tensor(0.1))
    assert (rate - expected).abs().max() < 2e-3, (rate - expected).abs().max()
    assert (rate > 0).all()
    fixed = kind(make_cfg, "jumprelu", "dictionary.init_firing_rate=null")
    fixed.init_from_data(x, x)
    assert torch.allclose(fixed.threshold, torch.full((fixed.d_sae,), 0.4))


def test_skip_transcoder_fits_a_linear_map_exactly_by_least_squares(make_cfg):
    d = kind(make_cfg, "skip_transcoder", d_in=12, d_out=8)
    with torch.no_grad():
        d.W_enc.zero_()
        d.b_enc.zero_()
    A, c = torch.randn(12, 8, generator=GEN), torch.randn(8, generator=GEN)
    x = torch.randn(500, 12, generator=GEN)
    d.fit_skip_(x, x @ A + c)
    torch.testing.assert_close(d.reconstruct(x), x @ A + c, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d.W_skip.detach(), A, atol=1e-4, rtol=1e-4)


def test_gated_paths_share_the_encoder(make_cfg):
    d = kind(make_cfg, "gated")
    x = torch.randn(64, 16, generator=GEN)
    names = {n for n, _ in d.named_parameters()}
    assert names == {"W_enc", "b_enc", "W_dec", "b_dec", "r_mag", "b_mag"}  # no separate W_mag
    with torch.no_grad():
        d.r_mag.copy_(torch.randn(d.d_sae, generator=GEN))
    torch.testing.assert_close(d.magnitude(x) - d.b_mag, x @ d.W_enc * d.r_mag.exp())
    with torch.no_grad():  # with r_mag = 0 and b_mag = b_enc, gating is a plain ReLU
        d.r_mag.zero_()
        d.b_mag.copy_(d.b_enc)
    torch.testing.assert_close(d.encode(x), torch.relu(x @ d.W_enc + d.b_enc))
    d(x, x).loss.backward()
    assert d.W_enc.grad.abs().sum() > 0 and d.r_mag.grad.abs().sum() > 0


def test_auxk_trains_dead_latents_on_the_residual(make_cfg):
    d = kind(make_cfg, "topk", "dictionary.k=2", "dictionary.aux_k=4")
    x = torch.randn(128, 16, generator=GEN)
    assert d(x, x).aux.item() == 0.0  # nothing dead yet
    d.dead[:10] = True
    out = d(x, x)
    assert out.aux.item() > 0 and out.sparsity.item() == 0  # AuxK is the aux loss, not a sparsity penalty
    torch.testing.assert_close(out.loss, out.mse + d.cfg.aux_coeff * out.aux)
    out.loss.backward()
    assert d.W_enc.grad[:, :10].abs().sum() > 0


@pytest.mark.parametrize("straight_through", [True, False])
@pytest.mark.parametrize("sparse", ["0", "1"])
def test_auxk_reaches_dead_latents_below_zero_everywhere(make_cfg, monkeypatch, sparse, straight_through):
    """Dead latents negative on every row explain nothing (aux = 1), but each still gets the
    gradient a linear code would: with every dead latent picked in every row (aux_k >= their number)
    and explained = 0, d aux / d b_enc[j] = -2 (sum_rows r) . W_dec[j] / sum_rows |r|^2. Gao et al.'s
    ReLU'd AuxK (`aux_straight_through=false`) gives them none."""
    monkeypatch.setenv("TCX_SPARSE", sparse)
    d = kind(make_cfg, "topk", "dictionary.k=2", "dictionary.aux_k=8", "dictionary.d_sae=32",
             f"dictionary.aux_straight_through={straight_through}")
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 9, 20, 31]] = True
    with torch.no_grad():
        d.b_enc[dead] = -100.0
    x, target = torch.randn(64, 16, generator=GEN), torch.randn(64, 16, generator=GEN)
    d.dead.copy_(dead)
    out = d(x, target)
    assert out.aux.item() == pytest.approx(1.0)
    d.zero_grad()
    out.aux.backward()
    residual = (target - out.y).detach() * d.target_scale
    expected = -2 * residual.sum(0) @ d.W_dec[dead].T / residual.pow(2).sum()
    torch.testing.assert_close(d.b_enc.grad[dead], expected.detach() if straight_through else torch.zeros(4))
    assert d.b_enc.grad[~dead].abs().sum() == 0 and d.W_enc.grad[:, ~dead].abs().sum() == 0


def test_auxk_marks_the_latents_silent_for_its_own_window(make_cfg):
    """AuxK's dead latents are those silent for `trainer.auxk_window_tokens`, not the reported dead
    window; none before a whole AuxK window has been seen."""
    d = kind(make_cfg, "topk", "dictionary.d_sae=32")
    dead = DeadFeatures(window_tokens=1_000_000)
    dead.since["main"] = torch.zeros(32, dtype=torch.long)
    dead.since["main"][:5], dead.since["main"][5] = 70_000, 60_000
    module = SimpleNamespace(members={"main": d})
    auxk = AuxK(dead, window_tokens=65_536)
    dead.tokens_seen = 60_000
    auxk.on_train_batch_start(None, module, {}, 0)
    assert not d.dead.any()
    dead.tokens_seen = 70_000
    auxk.on_train_batch_start(None, module, {}, 0)
    assert d.dead.nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert dead.mask("main") is None  # the reported window has not passed


@pytest.mark.parametrize("name", ["transcoder", "gated", "jumprelu"])
def test_resampling_restarts_dead_features(make_cfg, name):
    """Each kind restarts every per-feature parameter of a dead feature and nothing of a live one:
    gated's magnitude path with its gate, JumpReLU's threshold set as at initialisation."""
    d = kind(make_cfg, name)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.rand(p.shape, generator=GEN) * 0.5)  # every parameter away from its restart value
    dead = DeadFeatures(window_tokens=100)
    dead.since["main"], dead.tokens_seen = torch.zeros(d.d_sae, dtype=torch.long), 1000
    dead.since["main"][:7] = 500
    before = {k: v.detach().clone() for k, v in d.named_parameters()}
    x = torch.randn(64, 16, generator=GEN)
    out = d(x, x)
    module = SimpleNamespace(members={"main": d}, step_outputs={"main": out}, reads={"main": ("x", "x")})
    optimizer = torch.optim.Adam(d.parameters())
    out.loss.backward()
    optimizer.step()  # moments to clear
    before = {k: v.detach().clone() for k, v in d.named_parameters()}
    trainer = SimpleNamespace(global_step=10, max_steps=100, optimizers=[optimizer], world_size=1)
    Resample(dead, every_steps=10, seed=0).on_train_batch_end(
        trainer, module, out.loss, {"x": x}, 0)
    per_feature = {k: v for k, v in d.named_parameters() if k != "W_enc" and v.shape[:1] == (d.d_sae,)}
    per_feature["W_enc"] = d.W_enc.T
    for k, v in per_feature.items():
        old = before[k].T if k == "W_enc" else before[k]
        assert not torch.equal(v[:7], old[:7]), f"{k} of a dead feature was not restarted"
        assert torch.equal(v[7:], old[7:]), f"{k} of a live feature changed"
        moments = [m for m in optimizer.state[d.get_parameter(k)].values() if torch.is_tensor(m) and m.dim() > 0]
        assert moments and all((m.T if k == "W_enc" else m)[:7].abs().max() == 0 for m in moments), k
    assert (dead.since["main"] == 0).all()
    if name == "gated":
        assert (d.r_mag[:7] == 0).all() and (d.b_mag[:7] == 0).all()
    if name == "jumprelu":  # fires on init_firing_rate of the batch, as a new feature would (±1 row: θ is
        fired = (d.encode(x * d.input_scale)[:, :7] > 0).float().mean(0)  # kept as log θ, the quantile's row may tie)
        assert (fired - d.cfg.init_firing_rate).abs().max() <= 1.5 / len(x), fired


@pytest.mark.parametrize("name", options("dictionary"))
def test_every_kind_round_trips_and_trains_on_the_tiny_model(make_cfg, tmp_path, name):
    d = kind(make_cfg, name)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(torch.randn(p.shape, generator=GEN) * 0.01)
    save_dictionary(d, tmp_path / "saved", {"model": "tiny"})
    loaded, _ = load_dictionary(tmp_path / "saved")
    x = torch.randn(32, 16, generator=GEN)
    d.eval(), loaded.eval()
    torch.testing.assert_close(loaded.reconstruct(x), d.reconstruct(x))
    final = train(make_cfg(f"dictionary={name}", "trainer.max_tokens=2048", "trainer.eval_tokens=1024"),
                  tmp_path / "run")
    assert final["main"]["tokens"] == 2048 and "recovered_mean" in final["main"]
    assert json.loads((tmp_path / "run" / "dictionary.json").read_text())["kind"].startswith("tcx.")


@pytest.mark.parametrize("name", options("dictionary"))
def test_every_kind_reads_activations_of_any_leading_shape(make_cfg, name):
    """`encode`, `reconstruct` of `[batch, pos, d_in]` (how a hook hands them over, and how SAELens
    users call it) are those of its rows."""
    d = kind(make_cfg, name).eval()
    x = torch.randn(3, 7, 16, generator=GEN)
    torch.testing.assert_close(d.encode(x), d.encode(x.reshape(21, 16)).reshape(3, 7, -1))
    torch.testing.assert_close(d.reconstruct(x), d.reconstruct(x.reshape(21, 16)).reshape(3, 7, 16))


def test_every_kind_is_a_transcoder_or_an_sae_by_one_key(make_cfg):
    for name in ("topk", "batchtopk", "jumprelu", "gated", "skip_transcoder"):
        cfg = build_node(make_cfg(f"dictionary={name}", "dictionary.input_site=mlp_out").dictionary,
                         "dictionary")
        assert not cfg.is_transcoder


TOY = '''
from dataclasses import dataclass
import torch
from tcx.dictionaries.base import Dictionary, DictionaryConfig


@dataclass(kw_only=True)
class SoftplusConfig(DictionaryConfig):
    l1_coeff: float = 0.1

    def build(self, d_in, d_out, seed=0):
        return Softplus(self, d_in, d_out, seed)


class Softplus(Dictionary):
    def encode(self, x):
        return torch.nn.functional.softplus(x @ self.W_enc + self.b_enc) - 0.6931

    def penalty(self, z, pre):
        return z.abs().sum(-1).mean()

    @property
    def sparsity_coeff(self):
        return self.cfg.l1_coeff
'''


def test_a_new_kind_is_one_module_and_one_yaml(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "toy_kind.py").write_text(TOY)
    conf = tmp_path / "conf" / "dictionary"
    conf.mkdir(parents=True)
    (conf / "softplus.yaml").write_text("_target_: toy_kind.SoftplusConfig\ninput_site: mlp_in\n"
                                        "target_site: mlp_out\nexpansion_factor: 2\nl1_coeff: 0.01\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "tcx.cli.train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
         "experiment=smoke", "dictionary=softplus", "trainer.max_tokens=4096", "trainer.progress_bar=false",
         f"hydra.run.dir={run}", f"cache_dir={cache_dir}"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "dictionary.json").read_text())["kind"] == "toy_kind.SoftplusConfig"
    monkeypatch.syspath_prepend(str(tmp_path))  # the user's module is importable where they load it
    loaded, _ = load_dictionary(run)
    assert type(loaded).__name__ == "Softplus" and Path(run / "metrics.json").is_file()


def test_batchtopk_is_evaluated_with_its_threshold_on_rows(make_cfg, tmp_path):
    """Held-out evaluation and splicing must use inference behaviour on [rows, d], not batch ranking."""
    from tcx.evaluation.splice import splice_hooks
    from tcx.runs import Placed

    d = kind(make_cfg, "batchtopk", "dictionary.k=3")
    d.train()
    for _ in range(50):
        x = torch.randn(512, 16, generator=GEN)
        d(x, x)
    d.eval()
    acts = torch.randn(4, 10, 16, generator=GEN)
    (hook_name, write), = splice_hooks([Placed(d, "h", "h")], slice(0, 10))
    spliced = write(acts, None)
    torch.testing.assert_close(spliced, d.reconstruct(acts.reshape(-1, 16)).reshape(4, 10, 16))


@ONCE_IN_CI
def test_the_default_jumprelu_on_minilm_is_alive_and_sparse(make_cfg, tmp_path):
    # θ fixed at 0.4 (~4σ of MiniLM's normalised pre-activations): 93% never fired in 300 steps; θ
    # from the data but learning at the lr: every feature fired, L0 1,213 of 3,072 after 300k tokens
    cfg = make_cfg("dictionary=jumprelu", "trainer.max_tokens=300000", "trainer.dead_window_tokens=300000",
                   "trainer.eval_tokens=0", "logger=csv", smoke=False)
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dead_fraction"] <= 0.10 and metrics["l0"] < 200 and metrics["fvu"] < 0.3, metrics
