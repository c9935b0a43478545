"""How alike two runs' circuits for the same prompt are.

Each graph has a focus: the run's own features that hold most of their influence on the target
(`quality.focus`). Features of the two runs are matched by decoder direction: each feature's match
is the other run's feature whose decoder row has the highest cosine with its own, if that cosine is
at least `threshold`. Every other node (tokens, errors, real MLPs, biases, features of context
transcoders both share, the target) is the same node in both graphs. Then

    node_overlap   = share of both focus sets' features whose match is in the other focus set at
                     the same position (1: the same features carry the circuit)
    edge_rank_corr = Spearman correlation of the edge weights over the union of both graphs' edges
                     into or out of their focus, each weight read from each graph's full adjacency
                     (0 where a graph lacks the edge's nodes); features matched to one sum their edges
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tcx.circuits.nodes import Node


@dataclass
class Circuit:
    """One prompt's graph as stability needs it: every node with its full adjacency, and its focus."""

    nodes: list[Node]
    adjacency: Float[Tensor, "node node"]
    """adjacency[target, source]."""
    focus: Bool[Tensor, " node"]
    """The run's features that carry the circuit."""

    def focus_nodes(self) -> set[Node]:
        return {self.nodes[i] for i in self.focus.nonzero().flatten().tolist()}

    @cached_property
    def focus_edges(self) -> list[tuple[Node, Node]]:
        """(source, target) of every edge into or out of the focus."""
        touching = (self.adjacency != 0) & (self.focus[:, None] | self.focus[None, :])
        return [(self.nodes[s], self.nodes[d]) for d, s in touching.nonzero().tolist()]


def decoder_matches(W_dec: Float[Tensor, "d_sae d"], other: Float[Tensor, "d_other d"], rows: Int[Tensor, " n"],
                    threshold: float, chunk: int = 4096) -> dict[int, int]:
    """For each feature in `rows` of `W_dec`: the feature of `other` with the most similar decoder
    direction, if their cosine is at least `threshold`."""
    unit = other.float() / other.float().norm(dim=1, keepdim=True).clamp_min(1e-30)
    matches: dict[int, int] = {}
    for start in range(0, len(rows), chunk):
        idx = rows[start: start + chunk]
        mine = W_dec[idx].float()
        cos = (mine / mine.norm(dim=1, keepdim=True).clamp_min(1e-30)) @ unit.T
        best = cos.max(1)
        matches.update({int(i): int(j) for i, j, c in zip(idx, best.indices, best.values, strict=True)
                        if c >= threshold})
    return matches


def average_ranks(values: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """Ranks 0..n-1, ties sharing their average rank."""
    order = values.argsort()
    _, inverse, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    average = (ends - counts + ends - 1).double() / 2
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def rank_correlation(x: Tensor, y: Tensor) -> float | None:
    """Spearman's rho; None with fewer than two pairs or a constant side."""
    if len(x) < 2:
        return None
    rx, ry = average_ranks(x.double()), average_ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return None if denominator == 0 else float((rx * ry).sum()) / denominator


def _mapper(layer: int, matches: dict[int, int], side: str) -> Callable[[Node], Hashable]:
    """A node of one graph as a key of the other's: features at `layer` through their match."""
    def key(node: Node) -> Hashable:
        if node.kind != "feature" or node.layer != layer:
            return node
        j = matches.get(node.index)
        return ("unmatched", side, node) if j is None else Node("feature", layer, node.pos, j)

    return key


def _weights(circuit: Circuit, key: Callable[[Node], Hashable], pairs: list[tuple[Hashable, Hashable]]) -> Tensor:
    """Each (source key, target key) edge's weight in `circuit`: summed over the nodes carrying those keys."""
    rows: dict[Hashable, int] = {}
    for n in circuit.nodes:
        rows.setdefault(key(n), len(rows))
    merge = torch.zeros(len(rows), len(circuit.nodes), dtype=torch.float64)
    merge[[rows[key(n)] for n in circuit.nodes], torch.arange(len(circuit.nodes))] = 1.0
    by_key = merge @ circuit.adjacency.double() @ merge.T  # [target key, source key]
    src = torch.tensor([rows.get(s, -1) for s, _ in pairs], dtype=torch.long)
    dst = torch.tensor([rows.get(d, -1) for _, d in pairs], dtype=torch.long)
    found = (src >= 0) & (dst >= 0)
    out = torch.zeros(len(pairs), dtype=torch.float64)
    out[found] = by_key[dst[found], src[found]]
    return out


def compare(a: Circuit, b: Circuit, layer: int, a_to_b: dict[int, int],
            b_to_a: dict[int, int]) -> dict[str, float | None]:
    """Node overlap and edge rank correlation of two runs' circuits for one prompt (the runs sit at
    `layer`; `a_to_b`/`b_to_a` are their decoder matches)."""
    key_a, key_b = _mapper(layer, a_to_b, "a"), _mapper(layer, b_to_a, "b")
    fa, fb = a.focus_nodes(), b.focus_nodes()
    hits = sum(key_a(n) in fb for n in fa) + sum(key_b(n) in fa for n in fb)
    overlap = hits / (len(fa) + len(fb)) if fa or fb else None  # neither carries anything: no overlap to measure
    # the union of edges, in b's terms (a's unmatched features keep their own keys)
    pairs = list(dict.fromkeys([(key_a(s), key_a(d)) for s, d in a.focus_edges] + b.focus_edges))
    rho = rank_correlation(_weights(a, key_a, pairs), _weights(b, lambda n: n, pairs))
    return {"node_overlap": overlap, "edge_rank_correlation": None if rho is None or math.isnan(rho) else rho,
            "focus": [len(fa), len(fb)], "edges": len(pairs)}
