"""Training steps that touch only the features that fire.

A dense step costs six `[batch, d_in] x [d_in, d_sae]`-sized matrix products (encoder and decoder,
forward and two gradients each). Once codes are sparse, only the encoder's forward needs the whole
matrix: which features fire is not known before it. Everything after it works on the `nnz` firing
entries, held as `SparseCodes` (one CSR row per input row):

- decoder: `y = b_dec + sum_i z_i W_dec[i]`, an embedding bag over the firing rows. Its backward
  gives each value its own gradient (a dot product at that entry: `sampled_addmm`) and `W_dec` one
  only in the rows that fired (the codes' transpose times the output's gradient);
- encoder backward: the gradient of the pre-activations is sparse, so `W_enc`'s gradient is a
  sparse x dense product, and `b_enc`'s an index-add.

Both weight gradients read the firing entries grouped by feature (`ByFeature`, one sort a step).

`encode_sparse` and `decode` are the entry points (`decode` takes dense codes too); each kind
chooses which entries fire (`top_k`, `batch_top_k`, `above`). On a GPU the decoder and both weight
gradients run as Triton kernels (kernels.py; `TCX_TRITON=0` keeps the eager forms). Sparse steps are the default on CPU;
`TCX_SPARSE=0` gives the plain dense step everywhere and `TCX_SPARSE=1` the sparse one everywhere
(`sparse_enabled`). Both give the same step within float tolerance (tests/test_sparse_step.py).
Under autocast (`trainer.precision=bf16-mixed`) the encoder's product runs in autocast's dtype, as the
dense step's does; the gathers and sparse products after it accumulate in float32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tcx.dictionaries import kernels

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

MAX_DENSITY = {torch.float32: 0.08, torch.bfloat16: 0.04}
"""Above this share of firing entries the dense step is used instead, by the dtype of the encoder's
product (float32's for others). Measured on 2 CPU cores with AVX512-BF16, a ReLU step on sparse codes
against the dense step, at 1024 x 3072 and 4096 x 6144 codes: in float32 2.3-3.5x faster at 2%,
1.3x at 8%, even at 10-12%; in bf16 (autocast), whose dense products are 3.5x float32's, 1.7x
faster at 2%, even at 4%, half as fast at 8%. Since the decoder's sparse backward (`_SparseDecode`),
at 1024 x 3072: float32 1.41x at 8%, 1.07x at 12%, 0.92x at 16%; bf16 1.5x at 4%, 0.58x at 8%.
Kept where they were: they govern only the first steps of an L1 run."""


def sparse_enabled(device: torch.device) -> bool:
    """Whether training steps use sparse codes. `TCX_SPARSE=1` or `0` forces it (a compiled step is
    always dense); by default (`auto`) on CPU only: on a GPU a sparse step is bound by the host's
    launches and syncs, not by arithmetic. On an H200 at 4096 x 6144, with the Triton kernels, the
    sparse ReLU step was 0.61x the dense one at 0.5% firing in float32, 0.45x in bf16-mixed (README,
    "Speed")."""
    if torch.compiler.is_compiling():  # (`trainer.compile`: a sparse step's shapes depend on the data)
        return False
    flag = os.environ.get("TCX_SPARSE", "auto")
    return device.type == "cpu" if flag == "auto" else flag != "0"


def counts(x: Int[Tensor, " nnz"], n: int) -> Int[Tensor, " n"]:
    """How often each of `0 .. n-1` occurs in `x`: `bincount(x, minlength=n)`, which on a GPU reads
    `x`'s maximum back to size its output, a wait that keeps the host from queueing ahead. An
    integer scatter-add needs none and sums the same in any order. (On a CPU it takes 0.35 ms where
    bincount takes 0.19 for a ReLU step's 200k entries, in steps of 50 ms.)"""
    return torch.zeros(n, dtype=torch.long, device=x.device).index_add_(0, x, torch.ones_like(x))


class ByFeature(NamedTuple):
    """The firing entries grouped by feature: the CSR layout of the transposed codes, which both
    weight gradients read (`W_enc`'s and `W_dec`'s are `[d_sae, batch]`-sparse x dense products).
    Entry `order[j]` (row-major) is the j-th by feature, from row `rows[j]`; feature f's entries are
    `crow[f]:crow[f+1]`. Sorted stably: a fixed order of summation, so runs are reproducible."""

    order: Int[Tensor, " nnz"]
    rows: Int[Tensor, " nnz"]
    crow: Int[Tensor, " d_sae_plus_1"]

    @staticmethod
    def of(indices: Int[Tensor, " nnz"], rows: Int[Tensor, " nnz"], d_sae: int) -> ByFeature:
        order = indices.argsort(stable=True)
        crow = torch.zeros(d_sae + 1, dtype=torch.long, device=indices.device)
        crow[1:] = counts(indices, d_sae).cumsum(0)
        return ByFeature(order, rows[order], crow)

    def transposed(self, values: Float[Tensor, " nnz"], batch: int) -> Float[Tensor, "d_sae batch"]:
        """The sparse `[d_sae, batch]` matrix holding `values` (row-major, as the codes hold them)."""
        return torch.sparse_csr_tensor(self.crow, self.rows, values[self.order],
                                       (len(self.crow) - 1, batch), check_invariants=False)


class SparseCodes(NamedTuple):
    """Codes of `batch` rows: row r's firing features are `indices[offsets[r]:offsets[r+1]]`
    (CSR without its last offset, as embedding_bag takes it), and the same entries by feature."""

    values: Float[Tensor, " nnz"]
    indices: Int[Tensor, " nnz"]
    offsets: Int[Tensor, " batch"]
    d_sae: int
    by_feature: ByFeature | None = None

    @property
    def rows(self) -> Int[Tensor, " nnz"]:
        return rows_of(self.offsets, len(self.indices))

    def dense(self) -> Float[Tensor, "batch d_sae"]:
        z = self.values.new_zeros(len(self.offsets), self.d_sae)
        return z.index_put_((self.rows, self.indices), self.values, accumulate=True)

    def fired(self) -> Bool[Tensor, " d_sae"]:
        fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.values.device)
        return fired.index_fill_(0, self.indices[self.values != 0], True)

    def l0(self) -> Float[Tensor, ""]:
        return torch.count_nonzero(self.values) / len(self.offsets)

    def detach(self) -> SparseCodes:
        return self._replace(values=self.values.detach())


def rows_of(offsets: Int[Tensor, " batch"], nnz: int) -> Int[Tensor, " nnz"]:
    """The row of each entry of CSR codes."""
    counts = torch.diff(offsets, append=offsets.new_tensor([nnz]))
    return torch.repeat_interleave(torch.arange(len(offsets), device=offsets.device), counts, output_size=nnz)


Selection = tuple[Float[Tensor, " nnz"], Int[Tensor, " nnz"], Int[Tensor, " batch"]]
Rule = Callable[[Float[Tensor, "batch d_sae"]], Selection]
"""Which pre-activations fire: (values, feature indices, firing count per row), row-major."""


def top_k(k: int) -> Rule:
    """Each row's k largest, negative ones zeroed (they stay in the codes with no effect)."""
    def rule(pre: Tensor) -> Selection:
        values, index = pre.topk(k, dim=-1, sorted=False)
        counts = torch.full((len(pre),), k, dtype=torch.long, device=pre.device)
        return values.clamp_min(0).flatten(), index.flatten(), counts
    return rule


def batch_top_k(k: int) -> Rule:
    """The k·batch largest of the whole batch, negative ones zeroed, ranked among each row's
    largest few: 2k per row to start with. The ranking is exact once no row is full (a row whose
    every candidate made the batch's cut may hold more above it); the full rows alone are widened
    fourfold and the batch ranked again, which is far cheaper than ranking all batch·d_sae entries."""
    def rule(pre: Tensor) -> Selection:
        n, m = pre.shape
        candidates, columns = pre.topk(min(2 * k, m), dim=-1, sorted=False)
        while True:
            values, pick = candidates.flatten().topk(k * n, sorted=False)
            width = candidates.shape[1]
            full = (candidates.min(1).values > values.min()).nonzero().flatten()
            if width == m or not len(full):
                break
            wider = min(4 * width, m)
            more, more_columns = pre[full].topk(wider, dim=-1, sorted=False)
            candidates = torch.cat([candidates, candidates.new_full((n, wider - width), float("-inf"))], 1)
            columns = torch.cat([columns, columns.new_zeros(n, wider - width)], 1)
            candidates[full], columns[full] = more, more_columns
        rows, index = pick // width, columns.flatten()[pick]
        order = rows.argsort(stable=True)
        return values[order].clamp_min(0), index[order], counts(rows, n)
    return rule


def marked(mask: Bool[Tensor, "batch d_sae"]) -> Rule:
    """The entries `mask` marks (a mask already computed, e.g. to count them)."""
    def rule(pre: Tensor) -> Selection:
        rows, index = mask.nonzero(as_tuple=True)
        return pre[rows, index], index, counts(rows, len(pre))
    return rule


def above(threshold: float = 0.0) -> Rule:
    """Every entry above `threshold` (ReLU for 0)."""
    return lambda pre: marked(pre > threshold)(pre)


def transposed(a: Float[Tensor, "m n"]) -> Float[Tensor, "n m"]:
    """`a.T.contiguous()`; on CPU a block of rows at a time, which stays in cache: half the time of
    torch's one strided copy for a `[6144, 384]` matrix (2 ms against 6 on 2 cores)."""
    if a.device.type != "cpu":
        return a.T.contiguous()
    out = a.new_empty(a.shape[1], a.shape[0])
    for start in range(0, len(a), 512):
        out[:, start:start + 512] = a[start:start + 512].T
    return out


_workspaces: dict[tuple, Tensor] = {}


@torch.no_grad()
def pre_activations(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"],
                    b_enc: Float[Tensor, " d_sae"]) -> Float[Tensor, "batch d_sae"]:
    """`x @ W_enc + b_enc` without a graph, into a buffer reused by the next call of the same shape
    (on CPU a fresh 100 MB tensor costs a third of the product in page faults). Valid until then.
    Under autocast (`trainer.precision=bf16-mixed`) in its dtype, as the dense step's product is."""
    dtype = compute_dtype(W_enc)
    key = (len(x), W_enc.shape[1], dtype, W_enc.device)
    out = _workspaces.get(key)
    if out is None:
        _workspaces.clear()
        out = _workspaces[key] = torch.empty(key[:2], dtype=key[2], device=key[3])
    return torch.addmm(b_enc.to(dtype), x.to(dtype), W_enc.to(dtype), out=out)


def compute_dtype(W: Tensor) -> torch.dtype:
    """The dtype a product with `W` runs in: autocast's where it is on (an explicit `out=` product
    is not cast by it), else `W`'s own."""
    device = W.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else W.dtype


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, rule: Rule, straight_through: bool):
        values, indices, counts = rule(pre)
        ctx.straight_through = straight_through
        offsets = torch.cumsum(counts, 0) - counts
        by_feature = ByFeature.of(indices, rows_of(offsets, len(indices)), W_enc.shape[1])
        ctx.save_for_backward(x, W_enc, values, indices, offsets, *by_feature)
        ctx.mark_non_differentiable(indices, offsets, *by_feature)
        return values, indices, offsets, *by_feature

    @staticmethod
    def backward(ctx, grad_values: Tensor, *_not_differentiable):
        with torch.autocast(grad_values.device.type, enabled=False):  # (a backward called inside autocast)
            return _SparseEncode.gradients(ctx, grad_values)

    @staticmethod
    def gradients(ctx, grad_values: Tensor):
        x, W_enc, values, indices, offsets, *by_feature = ctx.saved_tensors
        by_feature = ByFeature(*by_feature)
        # relu: no gradient where nothing fired (unless straight through)
        grad = grad_values if ctx.straight_through else torch.where(values > 0, grad_values, 0)
        acc = torch.promote_types(grad.dtype, torch.float32)  # no bf16 sparse products on CPU
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, transposed(W_enc), offsets, mode="sum", per_sample_weights=grad)
        if kernels.enabled(x.device) and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            grad_W = torch.empty_like(W_enc)  # (both in one pass over the entries by feature)
            grad_b = kernels.sum_by_feature(x, grad, by_feature, out=grad_W.T).to(W_enc.dtype)
            needs = ctx.needs_input_grad
            return grad_x, grad_W if needs[1] else None, grad_b if needs[2] else None, None, None, None
        if ctx.needs_input_grad[1]:  # grad_W_enc.T = G.T @ x, G the sparse [batch, d_sae] gradient
            grad_W = transposed((by_feature.transposed(grad.to(acc), len(x)) @ x.to(acc)).to(W_enc.dtype))
        if ctx.needs_input_grad[2]:  # (summed in float32 where the codes are half precision)
            grad_b = torch.zeros(W_enc.shape[1], dtype=acc, device=grad.device).index_add_(
                0, indices, grad.to(acc)).to(W_enc.dtype)
        return grad_x, grad_W, grad_b, None, None, None


def encode_sparse(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"],
                  b_enc: Float[Tensor, " d_sae"], rule: Rule,
                  pre: Float[Tensor, "batch d_sae"] | None = None, straight_through: bool = False) -> SparseCodes:
    """The codes `rule` picks from `x @ W_enc + b_enc` (pass `pre` if already computed), with a
    backward that is sparse in the picked entries. Picks the rule zeroed (below 0) get no gradient,
    as through a ReLU; `straight_through` passes theirs on too (AuxK's dead latents)."""
    if pre is None:
        pre = pre_activations(x, W_enc, b_enc)
    values, indices, offsets, *by_feature = _SparseEncode.apply(x, W_enc, b_enc, pre, rule, straight_through)
    return SparseCodes(values, indices, offsets, W_enc.shape[1], ByFeature(*by_feature))


Codes = Tensor | SparseCodes
"""A step's codes: `[batch, d_sae]` dense, or sparse."""


class _SparseDecode(torch.autograd.Function):
    """`sum_i z_i W_dec[i]` per row, in float32 at least. Its backward is two sparse products where
    embedding_bag's (kept on a GPU without the kernels) scatters row by row: each value's gradient is
    one dot product (`grad_y @ W_dec.T` at the firing entries alone) and `W_dec`'s is the codes'
    transpose, CSR by feature, times `grad_y`. Eager (CPU): `sampled_addmm` and a CSR product, on 2
    cores at 1024 rows x 3072 features x 384 8 and 12 ms against embedding_bag's 17 and 26 at L0 120
    and 240. Triton (GPU): kernels.py."""

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, indices: Tensor, offsets: Tensor, by_feature: ByFeature):
        acc = torch.promote_types(W_dec.dtype, torch.float32)
        ctx.save_for_backward(values, W_dec, indices, offsets, *by_feature)
        if kernels.enabled(W_dec.device):
            return kernels.decode_rows(values, indices, crow_of(offsets, len(indices)), W_dec, acc)
        return F.embedding_bag(indices, W_dec.to(acc), offsets, mode="sum", per_sample_weights=values.to(acc))

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        with torch.autocast(grad_y.device.type, enabled=False):  # (a backward called inside autocast)
            return _SparseDecode.gradients(ctx, grad_y.to(torch.promote_types(grad_y.dtype, torch.float32)))

    @staticmethod
    def gradients(ctx, grad_y: Tensor):
        values, W_dec, indices, offsets, *by_feature = ctx.saved_tensors
        by_feature = ByFeature(*by_feature)
        crow = crow_of(offsets, len(indices))
        grad_values = grad_W = None
        if kernels.enabled(grad_y.device):
            if ctx.needs_input_grad[0]:
                grad_values = kernels.dot_rows(grad_y, W_dec, indices, crow, values.dtype)
            if ctx.needs_input_grad[1]:
                grad_W = torch.empty_like(W_dec)
                kernels.sum_by_feature(grad_y, values, by_feature, out=grad_W)
            return grad_values, grad_W, None, None, None
        if ctx.needs_input_grad[0]:
            sampled = torch.sparse_csr_tensor(crow, indices, torch.zeros_like(values, dtype=grad_y.dtype),
                                              (len(offsets), W_dec.shape[0]), check_invariants=False)
            grad_values = torch.sparse.sampled_addmm(sampled, grad_y, W_dec.to(grad_y.dtype).T, beta=0.0)
            grad_values = grad_values.values().to(values.dtype)
        if ctx.needs_input_grad[1]:
            grad_W = (by_feature.transposed(values.to(grad_y.dtype), len(offsets)) @ grad_y).to(W_dec.dtype)
        return grad_values, grad_W, None, None, None


def crow_of(offsets: Int[Tensor, " batch"], nnz: int) -> Int[Tensor, " batch_plus_1"]:
    """CSR row pointers: the offsets and the end (padded on the device: no host-to-device copy)."""
    return F.pad(offsets, (0, 1), value=nnz)


def decode(z: Codes, W_dec: Float[Tensor, "d_sae d_out"], b_dec: Float[Tensor, " d_out"]
           ) -> Float[Tensor, "batch d_out"]:
    if not isinstance(z, SparseCodes):
        return z @ W_dec + b_dec
    device = z.values.device
    if device.type == "cpu" or kernels.enabled(device):
        by_feature = z.by_feature or ByFeature.of(z.indices, z.rows, z.d_sae)
        with torch.autocast(device.type, enabled=False):
            y = _SparseDecode.apply(z.values, W_dec, z.indices, z.offsets, by_feature)
    else:  # (CUDA has no bf16 backward for the values: sum in fp32)
        acc = torch.promote_types(W_dec.dtype, torch.float32)
        y = F.embedding_bag(z.indices, W_dec.to(acc), z.offsets, mode="sum", per_sample_weights=z.values.to(acc))
    return y.to(W_dec.dtype) + b_dec


class _RowNorms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, W: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(W, dim=1)
        ctx.save_for_backward(W, norms)
        return norms

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        W, norms = ctx.saved_tensors
        # torch's `grad * (W / norms)` to the last bit, with 0 for a row of zeros (0 / inf), in place
        return (W / norms.masked_fill(norms == 0, float("inf"))[:, None]).mul_(grad[:, None])


def row_norms(W: Float[Tensor, "d_sae d"]) -> Float[Tensor, " d_sae"]:
    """`W.norm(dim=1)` with the same gradient to the last bit, in two passes over `W` where torch's
    backward makes three and a copy (divide, mask the zero rows, multiply)."""
    return _RowNorms.apply(W)


def weighted_l1(z: Codes, weights: Float[Tensor, " d_sae"]) -> Float[Tensor, ""]:
    """`sum_i z_i w_i` of non-negative codes (ReLU's: their L1), averaged over rows. Summed per
    feature first, then weighted: the dense form reads `[batch, d_sae]` once, and its backward is a
    broadcast row, not two more `[batch, d_sae]` products (abs and weights). A sparse step's
    per-feature sums also fix the order of summation (a gather's backward adds in any order)."""
    if isinstance(z, SparseCodes):
        per_feature = weights.new_zeros(z.d_sae).index_add(0, z.indices, z.values.to(weights.dtype))
        return (per_feature * weights).sum() / len(z.offsets)
    return (z.sum(0).to(weights.dtype) * weights).sum() / len(z)


def l0(z: Codes) -> Float[Tensor, ""]:
    """Mean number of active features per row. (`count_nonzero` over the whole tensor: summing a
    `[batch, d_sae]` mask per row first converts it to int64, eight times the work.)"""
    return z.l0() if isinstance(z, SparseCodes) else torch.count_nonzero(z) / len(z)


def as_dense(z: Codes) -> Float[Tensor, "batch d_sae"]:
    return z.dense() if isinstance(z, SparseCodes) else z


def fired(z: Codes) -> Bool[Tensor, " d_sae"]:
    """Features active in at least one row."""
    if isinstance(z, SparseCodes):
        return z.fired()
    return (z.amax(0) != 0) | (z.amin(0) != 0)  # two reductions: half the time of a mask and `any`


def relu_codes(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"],
               b_enc: Float[Tensor, " d_sae"]) -> Codes:
    """`ReLU(x @ W_enc + b_enc)` for a training step: sparse codes once few enough fire (always
    past the first steps of an L1 penalty), else the dense tensor."""
    if not sparse_enabled(x.device):
        return torch.addmm(b_enc, x, W_enc).relu_()  # (in place: addmm's backward keeps no output)
    pre = pre_activations(x, W_enc, b_enc)
    fires = pre > 0  # (counted, then kept for the sparse codes: one pass over pre, not two)
    limit = MAX_DENSITY.get(pre.dtype, MAX_DENSITY[torch.float32])
    if torch.count_nonzero(fires) > limit * pre.numel():  # (a bool `sum` widens to int64: 20x slower)
        return dense_from_pre(x, W_enc, b_enc, pre).relu_()
    return encode_sparse(x, W_enc, b_enc, marked(fires), pre)


class _DenseFromPre(torch.autograd.Function):
    """`x @ W_enc + b_enc` from pre-activations already computed, with the usual gradients: the
    dense fallback of a kind that had to compute them to learn how many fire."""

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor):
        ctx.save_for_backward(x, W_enc)
        return pre.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, W_enc = ctx.saved_tensors
        grad_x = grad @ W_enc.T if ctx.needs_input_grad[0] else None
        grad_W = x.to(grad.dtype).T @ grad if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_W, grad_b, None


def dense_from_pre(x: Float[Tensor, "batch d_in"], W_enc: Float[Tensor, "d_in d_sae"],
                   b_enc: Float[Tensor, " d_sae"], pre: Float[Tensor, "batch d_sae"]
                   ) -> Float[Tensor, "batch d_sae"]:
    return _DenseFromPre.apply(x, W_enc, b_enc, pre)
