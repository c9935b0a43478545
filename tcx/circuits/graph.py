"""The attribution graph (circuit-tracer's method on the frozen replay).

Rows are computed for the target and for the features with the most influence on it, in batches of
backward passes; a row holds `activation x gradient` for every source, so it sums exactly to its
node's pre-activation (minus b_enc) or to the target (minus its constant). At most
`max_feature_nodes` features get rows (and nodes); the others active at a (layer, position) are
merged into one `pruned` source there, so no row loses anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from tcx.circuits.nodes import Node
from tcx.circuits.prune import influence
from tcx.circuits.replacement import ReplacementModel
from tcx.circuits.sources import Sources
from tcx.circuits.targets import Target


@dataclass
class AttributionGraph:
    nodes: list[Node]
    adjacency: Float[Tensor, "node node"]
    """adjacency[target, source]: the edge weight; rows of sources (errors, biases, tokens) are 0."""
    activations: Float[Tensor, " node"]
    target: Target
    tokens: list[str]
    n_layers: int
    row_residual: float
    """The largest |sum of a row - its node's value| over computed rows (float error only)."""
    extra: dict = field(default_factory=dict)

    @property
    def target_weights(self) -> Float[Tensor, " node"]:
        w = torch.zeros(len(self.nodes), dtype=self.adjacency.dtype)
        w[-1] = 1.0
        return w


def _influence_on_target(sources: Sources, rows: dict[int, Tensor], target_row: Tensor) -> Float[Tensor, " feature"]:
    """Every active feature's influence on the target through the rows computed so far (features
    without rows pass nothing on): what decides which feature gets a row next."""
    ids = list(rows)
    matrix = torch.stack([target_row, *(rows[f] for f in ids)]).float().abs()
    matrix /= matrix.sum(1, keepdim=True).clamp_min(1e-30)
    square = torch.zeros(len(ids) + 1, len(ids) + 1)
    square[:, 1:] = matrix[:, ids]
    weights = torch.zeros(len(ids) + 1)
    weights[0] = 1.0
    return ((influence(square, weights) + weights) @ matrix)[: sources.n_features]


def attribute(rm: ReplacementModel, target: Target, max_feature_nodes: int = 4096, batch_size: int = 64,
              progress: bool = True, sources: Sources | None = None) -> AttributionGraph:
    sources = sources or Sources(rm)
    target_row = sources.edges(rm.replay.grads(rm.leaves, {target.hook: target.cotangent[None]}))[0]
    residual = abs(float(target_row.sum()) - (target.value - target.constant))
    rows: dict[int, Tensor] = {}
    bar = tqdm(total=min(max_feature_nodes, sources.n_features), desc="attribution rows", unit="feature",
               disable=not progress)
    goal = min(max_feature_nodes, sources.n_features)
    queue: list[int] = list(range(sources.n_features)) if sources.n_features <= max_feature_nodes else []
    while len(rows) < goal:
        if not queue:  # rank by influence again each time the rows double
            score = _influence_on_target(sources, rows, target_row)
            score[list(rows)] = -1
            queue = [f for f in score.topk(min(max(len(rows), batch_size), goal - len(rows))).indices.tolist()
                     if score[f] > 0]
            queue.sort(key=lambda f: int(sources.features[f, 0]))  # a batch of one layer stops its backward early
            if not queue:
                break
        todo, queue = queue[:batch_size], queue[batch_size:]
        got = sources.edges(rm.replay.grads(rm.leaves, sources.feature_cotangents(todo)))
        residual = max(residual, float((got.sum(1) - sources.preactivations(todo)).abs().max()))
        rows.update(zip(todo, got, strict=True))
        bar.update(len(todo))
    bar.close()
    return _assemble(rm, sources, target, target_row, rows, residual)


def _assemble(rm: ReplacementModel, sources: Sources, target: Target, target_row: Tensor,
              rows: dict[int, Tensor], residual: float) -> AttributionGraph:
    columns = sources.column_nodes()
    kept = sorted(rows)
    dropped = [f for f in range(sources.n_features) if f not in rows]
    pruned = sorted({(columns[f].layer, columns[f].pos) for f in dropped})
    nodes = ([columns[f] for f in kept] + columns[sources.n_features: -rm.n_pos - rm.n_layers - 2]
             + [Node("pruned", lyr, p) for lyr, p in pruned] + columns[-rm.n_pos - rm.n_layers - 2:] + [target.node])
    where = {n: i for i, n in enumerate(nodes)}
    # column c of a row -> node index (dropped features -> their pruned node)
    to_node = torch.tensor([where[Node("pruned", n.layer, n.pos)] if (c < sources.n_features and c not in rows)
                            else where[n] for c, n in enumerate(columns)])
    adjacency = torch.zeros(len(nodes), len(nodes), dtype=rm.dtype)
    for i, row in [(len(nodes) - 1, target_row), *((where[columns[f]], rows[f]) for f in kept)]:
        adjacency[i].index_add_(0, to_node, row)
    activations = torch.zeros(len(nodes), dtype=rm.dtype)  # features: z; pruned: the z they merge
    activations.index_add_(0, to_node[: sources.n_features], sources.acts)
    activations[-1] = target.value
    return AttributionGraph(nodes, adjacency, activations, target, rm.token_strings(), rm.n_layers, residual,
                            {"replay_error": rm.replay_error, "active_features": sources.n_features,
                             "feature_nodes": len(kept)})

