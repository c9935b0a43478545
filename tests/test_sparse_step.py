"""Sparse training steps (tcx/dictionaries/sparse.py) against the dense step they replace
(`TCX_SPARSE=0`): the same loss, outputs and gradients, on the shapes where index bookkeeping breaks."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from tcx.dictionaries.batchtopk import BatchTopKConfig
from tcx.dictionaries.relu import ReLUConfig
from tcx.dictionaries.skip import SkipTranscoderConfig
from tcx.dictionaries.sparse import SparseCodes, batch_top_k, decode, row_norms, transposed
from tcx.dictionaries.topk import TopKConfig


def step(d, x, target, sparse: bool, monkeypatch):
    monkeypatch.setenv("TCX_SPARSE", "1" if sparse else "0")
    d.zero_grad()
    out = d(x, target)
    out.loss.backward()
    return out, {n: p.grad.float() for n, p in d.named_parameters() if p.grad is not None}


def shift_for(cfg) -> float:
    """b_enc's shift that leaves some picked codes positive and some zeroed: ReLU's few firing,
    about a third to a half of the TopK family's k positive."""
    return -0.3 if isinstance(cfg, ReLUConfig) else -0.2


def both(cfg, d_in, d_out, monkeypatch, dtype=torch.float32, rows=50, shift=-0.3, dead=False, seed=0):
    torch.manual_seed(seed)
    d = cfg.build(d_in, d_out, seed=1).to(dtype)
    with torch.no_grad():
        d.b_enc += shift
    if dead:
        d.dead[::3] = True  # AuxK on: the dead latents' own sparse dictionary
    x, target = torch.randn(rows, d_in, dtype=dtype), torch.randn(rows, d_out, dtype=dtype)
    return step(d, x, target, True, monkeypatch), step(copy.deepcopy(d), x, target, False, monkeypatch)


@pytest.mark.parametrize("cfg, d_in, d_out, dead", [
    (TopKConfig(d_sae=48, k=1), 16, 12, False),
    (TopKConfig(d_sae=48, k=48), 16, 12, False),      # k = d_sae: negative entries are codes of 0
    (TopKConfig(d_sae=48, k=4, aux_k=7), 16, 12, True),
    (SkipTranscoderConfig(d_sae=40, k=5), 16, 12, True),
    (BatchTopKConfig(d_sae=48, k=3), 16, 16, False),
    (ReLUConfig(d_sae=512, l1_coeff=1.0), 16, 12, False),
    (ReLUConfig(d_sae=1100, l1_coeff=1.0), 16, 12, False),  # W_enc's gradient transposed in 3 blocks, one short
], ids=["topk-k1", "topk-k=d_sae", "topk-auxk", "skip-auxk", "batchtopk", "relu", "relu-1100"])
def test_sparse_step_is_the_dense_step(cfg, d_in, d_out, dead, monkeypatch):
    (s, gs), (d, gd) = both(cfg, d_in, d_out, monkeypatch, dead=dead, shift=shift_for(cfg))
    assert isinstance(s.z, SparseCodes) and isinstance(d.z, torch.Tensor)
    torch.testing.assert_close(s.z.dense(), d.z)
    torch.testing.assert_close(s.y, d.y)
    torch.testing.assert_close(s.loss, d.loss)
    assert gs.keys() == gd.keys()
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], atol=1e-6, rtol=1e-5, msg=name)
    assert torch.equal(s.z.fired(), (d.z != 0).any(0))
    assert float(s.z.l0()) == float((d.z != 0).sum(-1).float().mean())


def test_sparse_decode_gradients_are_the_dense_products():
    """The decoder's backward (each value's gradient a sampled dot product, W_dec's a CSR-by-feature
    product) against autograd's numerical derivative, in float64, on codes as TopK leaves them:
    columns unsorted within a row, one row empty, one feature in every row, some in none."""
    torch.manual_seed(0)
    d_sae, d_out = 9, 5
    per_row = [[7, 2, 0], [], [0, 5], [8, 0, 3, 1], [0]]
    indices = torch.tensor([i for row in per_row for i in row])
    counts = torch.tensor([len(row) for row in per_row])
    offsets = torch.cumsum(counts, 0) - counts
    values = torch.rand(len(indices), dtype=torch.float64, requires_grad=True)
    W_dec = torch.randn(d_sae, d_out, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d_out, dtype=torch.float64)

    def sparse(values, W_dec):
        return decode(SparseCodes(values, indices, offsets, d_sae), W_dec, b_dec)

    assert torch.autograd.gradcheck(sparse, (values, W_dec))
    dense = torch.zeros(len(per_row), d_sae, dtype=torch.float64).index_put(
        (torch.repeat_interleave(torch.arange(len(per_row)), counts), indices), values)
    grad_y = torch.randn(len(per_row), d_out, dtype=torch.float64)
    got = torch.autograd.grad(sparse(values, W_dec), (values, W_dec), grad_y)
    want = torch.autograd.grad(dense @ W_dec + b_dec, (values, W_dec), grad_y)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_is_the_transpose(dtype):
    a = torch.randn(1300, 7).to(dtype)  # blocks of 512 rows: two whole, one short
    assert torch.equal(transposed(a), a.T) and transposed(a).is_contiguous()


def test_row_norms_gradient_is_the_unit_rows():
    """d/dW sum_i c_i ||W_i|| = c_i W_i / ||W_i||, and 0 for a row of zeros (torch's subgradient)."""
    W = torch.randn(6, 5, dtype=torch.float64)
    W[2] = 0
    W.requires_grad_(True)
    c = torch.arange(1.0, 7.0, dtype=torch.float64)
    norms = row_norms(W)
    (norms * c).sum().backward()
    expected = c[:, None] * W.detach() / W.detach().norm(dim=1, keepdim=True)
    expected[2] = 0
    torch.testing.assert_close(norms, W.detach().norm(dim=1))
    torch.testing.assert_close(W.grad, expected)
    torch_W = W.detach().clone().requires_grad_(True)
    (torch_W.norm(dim=1) * c).sum().backward()
    assert torch.equal(W.grad, torch_W.grad)  # torch's own to the last bit: runs train as before


def test_relu_falls_back_to_dense_while_most_features_fire(monkeypatch):
    """At the start of an L1 run half the features fire; then the dense step is the faster one."""
    (s, gs), (d, gd) = both(ReLUConfig(d_sae=64, l1_coeff=1.0), 16, 12, monkeypatch, shift=0.0)
    assert isinstance(s.z, torch.Tensor)
    torch.testing.assert_close(s.loss, d.loss)
    for name in gd:
        torch.testing.assert_close(gs[name], gd[name], msg=name)


def test_relu_in_bf16_goes_dense_sooner(monkeypatch):
    """bf16's dense products are cheaper (3.5x float32's on a CPU with bf16 units), so under autocast
    a ReLU step goes dense from 4% of codes firing, not 8%: at 6% it is dense in bf16, sparse in float32."""
    monkeypatch.setenv("TCX_SPARSE", "1")
    torch.manual_seed(0)
    d = ReLUConfig(d_sae=512, l1_coeff=1.0).build(16, 12, seed=1)
    x = torch.randn(400, 16)
    with torch.no_grad():
        d.b_enc.copy_(-(x @ d.W_enc).quantile(0.94, dim=0))  # each feature fires on 6% of rows
    assert isinstance(d(x, torch.randn(400, 12)).z, SparseCodes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = d(x, torch.randn(400, 12)).z
    assert isinstance(z, torch.Tensor) and 0.05 < float((z != 0).float().mean()) < 0.07


def test_bf16(monkeypatch):
    cfg = TopKConfig(d_sae=64, k=4)
    (s, gs), (d, gd) = both(cfg, 16, 12, monkeypatch, dtype=torch.bfloat16, shift=shift_for(cfg))
    assert s.y.dtype == torch.bfloat16 and isinstance(s.z, SparseCodes)
    torch.testing.assert_close(s.loss, d.loss)
    for name in gd:  # bf16 keeps 8 bits: gradients agree to its rounding
        assert (gs[name] - gd[name]).abs().max() <= 0.02 * gd[name].abs().max(), name


@pytest.mark.parametrize("cfg", [TopKConfig(d_sae=64, k=4), ReLUConfig(d_sae=512, l1_coeff=1.0)], ids=["topk", "relu"])
def test_bf16_autocast(cfg, monkeypatch):
    """`trainer.precision=bf16-mixed`: float32 weights, the forward under autocast. The sparse step's
    encoder product runs in bf16 as the dense step's does, so the same features fire; the weights'
    gradients stay float32 and agree to bf16's rounding."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (s, gs), (d, gd) = both(cfg, 16, 12, monkeypatch, rows=200, shift=shift_for(cfg))
    assert isinstance(s.z, SparseCodes) and s.z.values.dtype == torch.bfloat16
    assert 0 < torch.count_nonzero(s.z.values) < len(s.z.values) or isinstance(cfg, ReLUConfig)
    assert torch.equal(s.z.dense() != 0, d.z != 0)
    torch.testing.assert_close(s.z.dense(), d.z.to(torch.bfloat16))
    torch.testing.assert_close(s.loss, d.loss, rtol=1e-2, atol=0)
    for name in gd:
        assert (gs[name] - gd[name]).abs().max() <= 0.02 * gd[name].abs().max(), name


def test_ties_give_the_same_step(monkeypatch):
    """Two identical features tie everywhere: either may be picked, so the loss, outputs and the
    pair's summed gradients must match, whichever each path chose."""
    cfg = TopKConfig(d_sae=32, k=3)
    torch.manual_seed(0)
    d = cfg.build(8, 8, seed=2)
    with torch.no_grad():
        d.W_enc[:, 1] = d.W_enc[:, 0]
        d.W_dec[1] = d.W_dec[0]
        d.W_enc[:, 0] *= 3  # make the pair win often
        d.W_enc[:, 1] *= 3
    x = torch.randn(40, 8)
    target = torch.randn(40, 8)
    s, gs = step(d, x, target, True, monkeypatch)
    r, gd = step(copy.deepcopy(d), x, target, False, monkeypatch)
    torch.testing.assert_close(s.loss, r.loss)
    torch.testing.assert_close(s.y, r.y)
    torch.testing.assert_close(gs["W_dec"][:2].sum(0), gd["W_dec"][:2].sum(0))
    torch.testing.assert_close(gs["W_dec"][2:], gd["W_dec"][2:])


def test_batch_top_k_is_exact_when_one_row_takes_most():
    """Ranking among each row's 2k largest must not miss entries of a row that holds more."""
    torch.manual_seed(0)
    for n, m, k in [(50, 48, 3), (7, 10, 10), (64, 100, 1), (40, 400, 2)]:
        pre = torch.randn(n, m)
        pre[0] += 5  # row 0 alone holds most of the batch's top k·n
        pre[1:3] += 2.5  # and two rows hold more than 2k: widened once or twice, beside row 0
        values, index, counts = batch_top_k(k)(pre)
        z = torch.zeros(n, m)
        z[torch.repeat_interleave(torch.arange(n), counts), index] = values
        flat = pre.relu().flatten()
        top, where = flat.topk(k * n)
        assert torch.equal(z, torch.zeros_like(flat).scatter_(0, where, top).view(n, m))
        assert counts[0] > 2 * k or m <= 2 * k


REPRO = """
import hashlib, torch
from tcx.dictionaries.relu import ReLUConfig
from tcx.dictionaries.topk import TopKConfig
torch.manual_seed(0)
x, t = torch.randn(1024, 64), torch.randn(1024, 64)
for cfg in (ReLUConfig(d_sae=2048, l1_coeff=1.0), TopKConfig(d_sae=2048, k=64)):
    d = cfg.build(64, 64)
    with torch.no_grad():
        d.b_enc.fill_(-0.175)  # 4% fire, 84k entries: the size where CPU kernels go parallel
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    for _ in range(5):
        out = d(x, t)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert type(out.z).__name__ == "SparseCodes"
    print(hashlib.md5(b"".join(p.detach().numpy().tobytes() for p in d.parameters())).hexdigest())
"""


def test_sparse_steps_are_reproducible_across_processes():
    """Same seed, same weights, bit for bit, in separate processes: what resume, the activation cache
    and bank-equals-solo rely on (a gather's backward, or an unstable sort, adds in any order)."""
    runs = [subprocess.run([sys.executable, "-c", REPRO], capture_output=True, text=True,
                           env={**os.environ, "TCX_SPARSE": "1"}) for _ in range(3)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert len({r.stdout for r in runs}) == 1, [r.stdout for r in runs]


def test_counts_are_bincounts():
    """The sparse step's per-row and per-feature counts (a scatter-add: no wait for the GPU) are
    bincount's: repeats, the last bin, bins nothing falls in, and no entries at all."""
    from tcx.dictionaries.sparse import counts

    x = torch.tensor([3, 0, 3, 9, 3, 0])
    assert counts(x, 10).tolist() == torch.bincount(x, minlength=10).tolist() == [2, 0, 0, 3, 0, 0, 0, 0, 0, 1]
    assert counts(x[:0], 4).tolist() == [0, 0, 0, 0]
    big = torch.randint(0, 6144, (200_000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(counts(big, 6144), torch.bincount(big, minlength=6144))
