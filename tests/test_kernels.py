"""The Triton kernels (tcx/dictionaries/kernels.py) against the products they compute, and a sparse step
through them against the dense step. On a GPU they run compiled; elsewhere interpreted on CPU tensors
(`TRITON_INTERPRET=1`, set by conftest.py). Shapes are awkward on purpose: empty rows, features in no
row, entries not a multiple of the kernels' block, widths of several column blocks with a short one."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from tcx.dictionaries.batchtopk import BatchTopKConfig
from tcx.dictionaries.relu import ReLUConfig
from tcx.dictionaries.skip import SkipTranscoderConfig
from tcx.dictionaries.sparse import ByFeature, SparseCodes, crow_of, decode
from tcx.dictionaries.topk import TopKConfig

if os.environ.get("CI"):
    import triton  # noqa: F401  (CI installs the dev extra: the kernels must be tested there)
else:
    pytest.importorskip("triton")

from tcx.dictionaries import kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def triton_on(monkeypatch):
    monkeypatch.setenv("TCX_TRITON", "1")


def random_codes(batch: int, d_sae: int, dtype: torch.dtype, seed: int = 0) -> tuple[SparseCodes, torch.Tensor]:
    """Ragged CSR codes and their dense form: every fifth row empty, up to 40 entries a row, columns
    unsorted; the last 3 features never fire, and the 4th-last fires in every other row (more entries
    than a kernel reads at once, for batches past 2·BJ)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, min(40, d_sae - 4), (batch,), generator=g)
    counts[::5] = 0
    hot = d_sae - 4
    rows = [torch.randperm(hot, generator=g)[:c] for c in counts.tolist()]
    rows = [torch.cat([r, torch.tensor([hot])]) if len(r) else r for r in rows]
    counts = torch.tensor([len(r) for r in rows])
    indices = torch.cat(rows)
    offsets = torch.cumsum(counts, 0) - counts
    values = torch.randn(len(indices), generator=g).to(dtype)
    codes = SparseCodes(values, indices, offsets, d_sae)
    return codes._replace(by_feature=ByFeature.of(indices, codes.rows, d_sae)), codes.dense()


def to(codes: SparseCodes, device: str) -> SparseCodes:
    return SparseCodes(codes.values.to(device), codes.indices.to(device), codes.offsets.to(device), codes.d_sae,
                       ByFeature(*(t.to(device) for t in codes.by_feature)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("d", [5, 200])  # one block of columns; two, the second short
def test_kernels_compute_the_dense_products(dtype, d):
    codes, z = random_codes(53, 70, dtype)
    assert (z[:, 66] != 0).sum() > 32  # (the hot feature: more entries than a kernel reads at once)
    W = torch.randn(70, d).to(dtype)
    A, grad_y = torch.randn(53, d).to(dtype), torch.randn(53, d).to(dtype)
    c, Wd, Ad, gd = to(codes, DEVICE), W.to(DEVICE), A.to(DEVICE), grad_y.to(DEVICE)
    crow = crow_of(c.offsets, len(c.indices))
    z64, W64, A64, g64 = z.double(), W.double(), A.double(), grad_y.double()
    tol = {"atol": 1e-5, "rtol": 1e-5}  # (every kernel sums in float32 at least: bf16 operands, exact products)

    y = kernels.decode_rows(c.values, c.indices, crow, Wd, torch.promote_types(dtype, torch.float32))
    torch.testing.assert_close(y.cpu().double(), z64 @ W64, **tol)

    dots = kernels.dot_rows(gd, Wd, c.indices, crow, torch.float64)
    torch.testing.assert_close(dots.cpu(), (g64 @ W64.T)[codes.rows, codes.indices], **tol)

    out = torch.full((d, 70), float("nan"), dtype=dtype, device=DEVICE)
    sums = kernels.sum_by_feature(Ad, c.values, c.by_feature, out=out.T)  # a transposed view, as W_enc's
    rounded = {"atol": 1e-2, "rtol": 8e-3} if dtype == torch.bfloat16 else tol  # (stored in bf16)
    torch.testing.assert_close(out.T.cpu().double(), (z64.T @ A64).to(dtype).double(), **rounded)
    torch.testing.assert_close(sums.cpu().double(), z64.sum(0), **tol)
    assert (out[:, -3:] == 0).all()  # features with no entries get zeros, not what was there (nan)


def test_kernel_decode_gradients_pass_gradcheck():
    """The decoder through the kernels, against autograd's numerical derivative in float64."""
    codes, _ = random_codes(9, 12, torch.float64, seed=1)
    codes = to(codes, DEVICE)
    values = codes.values.clone().requires_grad_()
    W_dec = torch.randn(12, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    b_dec = torch.randn(7, dtype=torch.float64, device=DEVICE)
    assert torch.autograd.gradcheck(lambda v, W: decode(codes._replace(values=v), W, b_dec), (values, W_dec))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_kernels_take_a_broadcast_gradient(reduce):
    """`decode(...).sum()` hands the backward a gradient of stride 0 (an expanded scalar)."""
    codes, z = random_codes(11, 20, torch.float32, seed=3)
    codes = to(codes, DEVICE)
    values = codes.values.clone().requires_grad_()
    W_dec = torch.randn(20, 6, device=DEVICE, requires_grad=True)
    getattr(decode(codes._replace(values=values), W_dec, torch.zeros(6, device=DEVICE)), reduce)().backward()
    z = z.to(DEVICE).requires_grad_()
    W = W_dec.detach().clone().requires_grad_()
    getattr(z @ W, reduce)().backward()
    torch.testing.assert_close(values.grad, z.grad[codes.rows, codes.indices])
    torch.testing.assert_close(W_dec.grad, W.grad)


def test_kernels_with_no_entries():
    """A batch where nothing fires: the decoder gives b_dec, every gradient is zero."""
    codes = SparseCodes(torch.zeros(0, device=DEVICE, requires_grad=True), torch.zeros(0, dtype=torch.long,
                        device=DEVICE), torch.zeros(4, dtype=torch.long, device=DEVICE), 9)
    W_dec = torch.randn(9, 5, device=DEVICE, requires_grad=True)
    b_dec = torch.randn(5, device=DEVICE)
    y = decode(codes, W_dec, b_dec)
    torch.testing.assert_close(y, b_dec.expand(4, 5))
    (y * torch.randn(4, 5, device=DEVICE)).sum().backward()
    assert W_dec.grad.abs().sum() == 0


CASES = [
    (TopKConfig(d_sae=48, k=1), 16, 12, False),
    (TopKConfig(d_sae=48, k=48), 16, 12, False),
    (TopKConfig(d_sae=48, k=4, aux_k=7), 16, 12, True),
    (SkipTranscoderConfig(d_sae=40, k=5), 16, 12, True),
    (BatchTopKConfig(d_sae=48, k=3), 16, 16, False),
    (ReLUConfig(d_sae=512, l1_coeff=1.0), 16, 12, False),
    (ReLUConfig(d_sae=300, l1_coeff=1.0), 200, 150, False),  # widths of two column blocks, the second short
]


@pytest.mark.parametrize("cfg, d_in, d_out, dead", CASES,
                         ids=["topk-k1", "topk-k=d_sae", "topk-auxk", "skip-auxk", "batchtopk", "relu", "relu-wide"])
def test_a_step_through_the_kernels_is_the_dense_step(cfg, d_in, d_out, dead, monkeypatch):
    torch.manual_seed(0)
    d = cfg.build(d_in, d_out, seed=1).to(DEVICE)
    with torch.no_grad():
        d.b_enc -= 0.3 if isinstance(cfg, ReLUConfig) else 0.2
    if dead:
        d.dead[::3] = True
    x, target = torch.randn(50, d_in, device=DEVICE), torch.randn(50, d_out, device=DEVICE)

    def step(model, sparse: bool):
        monkeypatch.setenv("TCX_SPARSE", "1" if sparse else "0")
        out = model(x, target)
        out.loss.backward()
        return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (s, gs), (r, gr) = step(d, True), step(copy.deepcopy(d), False)
    assert isinstance(s.z, SparseCodes)
    torch.testing.assert_close(s.y, r.y)
    torch.testing.assert_close(s.loss, r.loss)
    assert gs.keys() == gr.keys()
    for name in gr:
        torch.testing.assert_close(gs[name], gr[name], atol=1e-5, rtol=1e-5, msg=name)


def test_kernels_sum_in_a_fixed_order():
    """Two runs of the same step give the same gradients bit for bit (no atomics): what resume and
    bank-equals-solo rely on."""
    codes, _ = random_codes(64, 96, torch.float32, seed=2)
    codes = to(codes, DEVICE)
    A = torch.randn(64, 33, device=DEVICE)
    runs = []
    for _ in range(2):
        out = torch.empty(96, 33, device=DEVICE)
        sums = kernels.sum_by_feature(A, codes.values, codes.by_feature, out=out)
        runs.append((out, sums, kernels.dot_rows(A, out, codes.indices, crow_of(codes.offsets, len(codes.indices)),
                                                 torch.float32)))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
