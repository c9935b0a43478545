"""Triton kernels for sparse codes: the decoder and both weight gradients of a sparse step on a GPU.

Each entry point has its eager form beside it in sparse.py (embedding_bag and sparse CSR products,
the CPU's path) and `TCX_TRITON` chooses: `auto` (the default) on CUDA tensors where triton imports,
`1` everywhere (CPU tensors need `TRITON_INTERPRET=1`, as the tests set it), `0` never. Every sum
runs in a fixed order, in float32 (float64 for float64 operands), so a step is reproducible.

Codes are CSR (`crow[r]:crow[r+1]` are row r's entries) and, for the weight gradients, the same
entries grouped by feature (`ByFeature`). Two kernels, each one program per row or per feature (and
block of output columns), looping over that row's or feature's entries `BJ` at a time: a weighted sum
of gathered rows over a segment (`_segment_sum`), which the decoder's forward and both weight
gradients are, and the dot products of each code's gradient (`_dot_rows`):

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
    def _segment_sum(M, weights, order, gather, crow, out, sums, d, stride_m, stride_os, stride_oc,
                     HAS_ORDER: tl.constexpr, HAS_SUMS: tl.constexpr,
                     BJ: tl.constexpr, BD: tl.constexpr, ACC: tl.constexpr):
        """out[s] = sum_j weights[k] M[gather[j]] over segment s's entries j (k = order[j] with
        HAS_ORDER, else j), and with HAS_SUMS sums[s] = sum_j weights[k]."""
        s = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BD + tl.arange(0, BD)
        in_d = cols < d
        start, end = tl.load(crow + s), tl.load(crow + s + 1)
        acc = tl.zeros((BD,), ACC)
        total = tl.zeros((BJ,), ACC)
        for j0 in range(start, end, BJ):
            j = j0 + tl.arange(0, BJ)
            in_j = j < end
            if HAS_ORDER:  # noqa: SIM108  (a constexpr branch, in the form every triton compiles)
                k = tl.load(order + j, mask=in_j, other=0)
            else:
                k = j
            w = tl.load(weights + k, mask=in_j, other=0.0).to(ACC)
            g = tl.load(gather + j, mask=in_j, other=0)
            m = tl.load(M + g[:, None] * stride_m + cols[None, :], mask=in_j[:, None] & in_d[None, :], other=0.0)
            acc += tl.sum(w[:, None] * m.to(ACC), axis=0)
            total += w
        tl.store(out + s * stride_os + cols.to(tl.int64) * stride_oc, acc, mask=in_d)  # (d_in·d_sae may pass 2³¹)
        if HAS_SUMS:
            tl.store(sums + s, tl.sum(total, axis=0), mask=tl.program_id(1) == 0)


def _segment_sums(M: Float[Tensor, "n d"], weights: Float[Tensor, " nnz"], gather: Int[Tensor, " nnz"],
                  crow: Int[Tensor, " segments_plus_1"], out: Float[Tensor, "segments d"],
                  order: Int[Tensor, " nnz"] | None = None, sums: Float[Tensor, " segments"] | None = None) -> None:
    """`_segment_sum` over every segment and block of columns (`out` may be a transposed view)."""
    if not len(out):
        return
    M, BD = M.contiguous(), _columns(out.shape[1])  # (the kernel reads rows with unit stride)
    _segment_sum[(len(out), triton.cdiv(out.shape[1], BD))](
        M, weights, gather if order is None else order, gather, crow, out, out if sums is None else sums,
        out.shape[1], M.stride(0), out.stride(0), out.stride(1), HAS_ORDER=order is not None,
        HAS_SUMS=sums is not None, BJ=BJ, BD=BD, ACC=_acc(M.dtype), num_warps=NUM_WARPS)


def decode_rows(values: Float[Tensor, " nnz"], indices: Int[Tensor, " nnz"], crow: Int[Tensor, " batch_plus_1"],
                W: Float[Tensor, "d_sae d"], out_dtype: torch.dtype) -> Float[Tensor, "batch d"]:
    """`y[r] = sum_j values[j] W[indices[j]]` over row r's entries, summed in float32 (float64 for float64)."""
    y = torch.empty(len(crow) - 1, W.shape[1], dtype=out_dtype, device=W.device)
    _segment_sums(W, values, indices, crow, y)
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
    sums = torch.empty(len(out), dtype=torch.promote_types(A.dtype, torch.float32), device=A.device)
    _segment_sums(A, weights, by_feature.rows, by_feature.crow, out, order=by_feature.order, sums=sums)
    return sums
