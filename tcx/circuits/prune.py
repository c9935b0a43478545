"""Influence, pruning and the graph scores, as circuit-tracer defines them (`graph.py` there).

With `N` the adjacency with each row's |weights| normalised to sum to 1, a node's influence on the
targets is `w (N + N^2 + ...)` for target weights `w`. Nodes are kept, most influential first, until
they hold `node_threshold` of the total; edges likewise with `edge_threshold`; tokens and targets
always stay.
    replacement  = token influence / (token + error influence): how much of the target the
                   features explain end to end from the prompt
    completeness = influence-weighted share of every node's inputs that come from non-error nodes
Unlike circuit-tracer, tcx counts the `pruned` remainders (features given no row) and real MLPs as
unexplained, and bias nodes as explained; circuit-tracer drops the unselected features' edges and has
no bias nodes. Validation of the thresholds is `PruneConfig`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor

UNEXPLAINED = ("error", "mlp", "pruned")
"""Sources that stand for computation no feature accounts for."""


def normalised(adjacency: Float[Tensor, "n n"]) -> Float[Tensor, "n n"]:
    a = adjacency.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-30)


def influence(matrix: Float[Tensor, "n n"], weights: Float[Tensor, " n"], max_iter: int = 10_000) -> Tensor:
    """`weights (M + M^2 + ...)` for a nilpotent (acyclic) `matrix`, by repeated products."""
    step = weights @ matrix
    total = step.clone()
    for _ in range(max_iter):
        if not step.any():
            return total
        step = step @ matrix
        total += step
    raise RuntimeError("influence did not converge: the graph has a cycle")


def _cutoff(scores: Tensor, fraction: float) -> Tensor:
    ordered = scores.flatten().sort(descending=True).values
    share = ordered.cumsum(0) / ordered.sum().clamp_min(1e-30)
    return ordered[min(int(torch.searchsorted(share, fraction)), len(ordered) - 1)]


class Pruned(NamedTuple):
    nodes: Bool[Tensor, " n"]
    edges: Bool[Tensor, "n n"]
    node_influence: Float[Tensor, " n"]


def prune(adjacency: Tensor, weights: Tensor, always: Bool[Tensor, " n"], has_inputs: Bool[Tensor, " n"],
          node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """`always`: nodes kept whatever their influence (tokens, targets); `has_inputs`: nodes that
    must keep an incoming edge to stay (features)."""
    node_influence = influence(normalised(adjacency), weights)
    keep = (node_influence >= _cutoff(node_influence, node_threshold)) | always
    kept = adjacency * keep[:, None] * keep[None, :]
    norm = normalised(kept)
    edge_scores = norm * (influence(norm, weights) + weights)[:, None]
    edges = (edge_scores >= _cutoff(edge_scores, edge_threshold)) & (kept != 0)
    while True:  # drop nodes left without outgoing (or, for features, incoming) edges, until stable
        before = keep.clone()
        keep &= always | edges.any(0)
        keep &= always | ~has_inputs | edges.any(1)
        edges &= keep[:, None] & keep[None, :]
        if torch.equal(keep, before):
            return Pruned(keep, edges, node_influence)


def prune_graph(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    """`prune` with tcx's node kinds: tokens and the target always stay; features need an input."""
    kinds = [n.kind for n in graph.nodes]
    return prune(graph.adjacency, graph.target_weights, torch.tensor([k in ("embedding", "logit", "target")
                                                                      for k in kinds]),
                 torch.tensor([k == "feature" for k in kinds]), node_threshold, edge_threshold)


def scores(adjacency: Tensor, weights: Tensor, kinds: list[str]) -> dict[str, float]:
    norm = normalised(adjacency)
    node_influence = influence(norm, weights)
    error = torch.tensor([k in UNEXPLAINED for k in kinds])
    token = torch.tensor([k == "embedding" for k in kinds])
    t, e = node_influence[token].sum(), node_influence[error].sum()
    out = node_influence + weights
    explained = 1 - norm[:, error].sum(1)
    return {"replacement": float(t / (t + e).clamp_min(1e-30)),
            "completeness": float((explained * out).sum() / out.sum().clamp_min(1e-30))}
