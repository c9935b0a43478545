"""Triton kernels for sparse codes: the decoder and both weight gradients of a sparse step on a GPU.

Each entry point has its eager form beside it in sparse.py (embedding_bag and sparse CSR products,
the CPU's path) and `TCX_TRITON` chooses: `auto` (the default) on CUDA tensors where triton imports,
`1` everywhere (CPU tensors need `TRITON_INTERPRET=1`, as the tests set it), `0` never. Every sum
runs in a fixed order, in float32 (float64 for float64 operands), so a step is reproducible.

Codes are CSR (`crow[r]:crow[r+1]` are row r's entries) and, for the weight gradients, the same
entries grouped by feature (`ByFeature`). Three kernels, each one program per row or per feature and
block of output columns, looping over that row's or feature's entries `BJ` at a time:

    decode_rows     y[r]       = sum_j values[j] W[indices[j]]          (the decoder's forward)
    dot_rows        out[j]     = grad_y[r] . W[indices[j]]              (each code's gradient)
    sum_by_feature  out[f]     = sum_j weights[j] A[rows[j]]            (W_dec's and W_enc's gradients)
                    sums[f]    = sum_j weights[j]                       (b_enc's)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from tcx.dictionaries.sparse import ByFeature

try:
    import triton
    import triton.language as tl
except ImportError:  # (a CPU-only torch install: the eager forms run)
    triton = None

BJ, MAX_COLUMNS, NUM_WARPS = 32, 128, 4
"""A program reads `BJ` entries at once (a `[BJ, BD]` tile of weight rows) and writes at most
`MAX_COLUMNS` output columns (BD: the width rounded up to a power of two, capped), with `NUM_WARPS`
warps. Of seven shapes timed on an H200 (benchmarks/sparse_kernels.py: batch 4096, d 384, 6144
latents), summed over ReLU-like and TopK-like codes, fp32 and bf16: 12.2 ms against the fastest
shape's 12.0 and the eager products' 13.1."""


def enabled(device: torch.device) -> bool:
    flag = os.environ.get("TCX_TRITON", "auto")
    if triton is None or flag == "0":
        return False
    return flag == "1" or device.type == "cuda"


def _acc(dtype: torch.dtype):
    """What sums run in: float64 for float64 operands (gradcheck), else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _columns(d: int) -> int:
    return min(MAX_COLUMNS, triton.next_power_of_2(d))


if triton is not None:

    @triton.jit
    def _decode_rows(values, indices, crow, W, y, d, stride_w, stride_y,
                     BJ: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BD + tl.arange(0, BD)
        in_d = cols < d
        start, end = tl.load(crow + r), tl.load(crow + r + 1)
        acc = tl.zeros((BD,), ACC)
        for j0 in range(start, end, BJ):
            j = j0 + tl.arange(0, BJ)
            in_j = j < end
            idx = tl.load(indices + j, mask=in_j, other=0)
            v = tl.load(values + j, mask=in_j, other=0.0).to(ACC)
            w = tl.load(W + idx[:, None] * stride_w + cols[None, :], mask=in_j[:, None] & in_d[None, :], other=0.0)
            acc += tl.sum(v[:, None] * w.to(ACC), axis=0)
        tl.store(y + r * stride_y + cols, acc, mask=in_d)

    @triton.jit
    def _dot_rows(grad_y, W, indices, crow, out, d, stride_g, stride_w,
                  BJ: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        start, end = tl.load(crow + r), tl.load(crow + r + 1)
        for j0 in range(start, end, BJ):
            j = j0 + tl.arange(0, BJ)
            in_j = j < end
            idx = tl.load(indices + j, mask=in_j, other=0)
            acc = tl.zeros((BJ,), ACC)
            for c0 in range(0, d, BD):
                cols = c0 + tl.arange(0, BD)
                in_d = cols < d
                g = tl.load(grad_y + r * stride_g + cols, mask=in_d, other=0.0).to(ACC)
                w = tl.load(W + idx[:, None] * stride_w + cols[None, :], mask=in_j[:, None] & in_d[None, :],
                            other=0.0)
                acc += tl.sum(w.to(ACC) * g[None, :], axis=1)
            tl.store(out + j, acc, mask=in_j)

    @triton.jit
    def _sum_by_feature(A, weights, order, rows, crow, out, sums, d, stride_a, stride_of, stride_od,
                        BJ: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr):
        f = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BD + tl.arange(0, BD)
        in_d = cols < d
        start, end = tl.load(crow + f), tl.load(crow + f + 1)
        acc = tl.zeros((BD,), ACC)
        total = tl.zeros((BJ,), ACC)
        for j0 in range(start, end, BJ):
            j = j0 + tl.arange(0, BJ)
            in_j = j < end
            w = tl.load(weights + tl.load(order + j, mask=in_j, other=0), mask=in_j, other=0.0).to(ACC)
            row = tl.load(rows + j, mask=in_j, other=0)
            a = tl.load(A + row[:, None] * stride_a + cols[None, :], mask=in_j[:, None] & in_d[None, :], other=0.0)
            acc += tl.sum(w[:, None] * a.to(ACC), axis=0)
            total += w
        tl.store(out + f * stride_of + cols.to(tl.int64) * stride_od, acc, mask=in_d)  # (d_in·d_sae may pass 2³¹)
        tl.store(sums + f, tl.sum(total, axis=0), mask=tl.program_id(1) == 0)


def decode_rows(values: Float[Tensor, " nnz"], indices: Int[Tensor, " nnz"], crow: Int[Tensor, " batch_plus_1"],
                W: Float[Tensor, "d_sae d"], out_dtype: torch.dtype) -> Float[Tensor, "batch d"]:
    """`y[r] = sum_j values[j] W[indices[j]]` over row r's entries, summed in float32 (float64 for float64)."""
    batch, d, W = len(crow) - 1, W.shape[1], W.contiguous()  # (the kernels read rows with unit stride)
    y = torch.empty(batch, d, dtype=out_dtype, device=W.device)
    if batch:
        BD = _columns(d)
        _decode_rows[(batch, triton.cdiv(d, BD))](values, indices, crow, W, y, d, W.stride(0), y.stride(0),
                                                   BJ=BJ, BD=BD, ACC=_acc(W.dtype), num_warps=NUM_WARPS)
    return y


def dot_rows(grad_y: Float[Tensor, "batch d"], W: Float[Tensor, "d_sae d"], indices: Int[Tensor, " nnz"],
             crow: Int[Tensor, " batch_plus_1"], out_dtype: torch.dtype) -> Float[Tensor, " nnz"]:
    """`out[j] = grad_y[r] . W[indices[j]]` for each entry j of row r: `grad_y @ W.T` at the entries.
    (`grad_y` may come broadcast, e.g. from a `.sum()`: made contiguous first.)"""
    grad_y, W = grad_y.contiguous(), W.contiguous()
    out = torch.empty(len(indices), dtype=out_dtype, device=W.device)
    if len(indices):
        _dot_rows[(len(grad_y),)](grad_y, W, indices, crow, out, W.shape[1], grad_y.stride(0), W.stride(0),
                                  BJ=BJ, BD=_columns(W.shape[1]), ACC=_acc(W.dtype), num_warps=NUM_WARPS)
    return out


def sum_by_feature(A: Float[Tensor, "batch d"], weights: Float[Tensor, " nnz"], by_feature: ByFeature,
                   out: Float[Tensor, "d_sae d"]) -> Float[Tensor, " d_sae"]:
    """`out[f] = sum_j weights[j] A[row of j]` over feature f's entries (`weights` row-major, as the
    codes hold them; `out` may be a transposed view), and returns `sums[f] = sum_j weights[j]`."""
    d_sae, d = out.shape
    sums = torch.empty(d_sae, dtype=torch.promote_types(A.dtype, torch.float32), device=A.device)
    A = A.contiguous()
    BD = _columns(d)
    _sum_by_feature[(d_sae, triton.cdiv(d, BD))](
        A, weights, by_feature.order, by_feature.rows, by_feature.crow, out, sums, d, A.stride(0),
        out.stride(0), out.stride(1), BJ=BJ, BD=BD, ACC=_acc(A.dtype), num_warps=NUM_WARPS)
    return sums
