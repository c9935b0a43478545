"""The paper's greedy path search (arXiv 2406.11944 §4.2): from the target, repeatedly take each
path's last node, split it into its direct contributions (features, heads at source positions,
tokens, errors, biases) and keep the `num_branches` paths with the largest |contribution|, for
`num_iters` steps. A path's value is its first node's contribution to the target through it.

Every node expanded is also written as a small exact graph: its kept children, plus one error,
one bias and one pruned remainder, so that the children always sum to the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm.auto import tqdm

from tcx.circuits.direct import Contribution, Direct, Probe
from tcx.circuits.nodes import Node
from tcx.circuits.targets import Target

Route = tuple[Node, ...]
"""A node as reached from the target: the same feature reached two ways has two values (its probe,
scaled by what lies downstream of it, differs), so path-search nodes are routes."""


@dataclass
class Path:
    nodes: list[Node]
    value: float
    probe: Probe | None


@dataclass
class PathGraph:
    paths: list[Path]
    edges: dict[tuple[Route, Route], float] = field(default_factory=dict)
    """(child route, parent route) -> the child's contribution to the target through the parent."""
    values: dict[Route, float] = field(default_factory=dict)

    def remainders(self) -> dict[Route, float]:
        """Each merged parent's pruned remainder."""
        return {p: v for (c, p), v in self.edges.items() if c[-1].kind == "pruned"}


def search(direct: Direct, target: Target, target_node: Node, num_iters: int = 3, num_branches: int = 15,
           progress: bool = True) -> PathGraph:
    """`num_iters`, `num_branches` are validated by `SearchConfig`."""
    root = Path([target_node], target.value, Probe(target.hook, target.cotangent, target.constant))
    graph = PathGraph([root], values={(target_node,): target.value})
    frontier = graph.paths
    expanded: dict[Route, tuple[list[Contribution], float]] = {}
    for _ in tqdm(range(num_iters), desc="path search", disable=not progress):
        candidates: list[Path] = []
        for path in frontier:
            if path.probe is None:  # tokens: nothing upstream
                candidates.append(path)
                continue
            route = tuple(path.nodes)
            if route not in expanded:
                expanded[route] = (direct.contributions(path.probe), path.probe.constant)
            candidates += [Path([*path.nodes, c.node], c.value, c.probe) for c in expanded[route][0]
                           if c.node not in path.nodes and c.node.kind not in ("error", "mlp", "bias")]
        frontier = sorted(candidates, key=lambda p: -abs(p.value))[:num_branches]
    graph.paths = frontier
    kept = {tuple(p.nodes[: k + 1]) for p in frontier for k in range(len(p.nodes))}
    for route, (children, constant) in expanded.items():
        if route in kept:  # parents off every kept path would be islands, already in a remainder
            _merge(graph, route, children, kept, constant, len(graph.values))
    return graph


def _merge(graph: PathGraph, parent: Route, children: list[Contribution], kept: set[Route], constant: float,
           tag: int) -> None:
    """The parent's children on kept paths, and error, bias and pruned remainders summing the rest
    (the bias lump includes the parent's own constant: b_enc, b_U)."""
    graph.values.setdefault(parent, sum(c.value for c in children) + constant)
    lumps = {"error": 0.0, "bias": constant, "pruned": 0.0}
    for c in children:
        route = (*parent, c.node)
        if route in kept:
            graph.edges[(route, parent)] = c.value
            graph.values[route] = c.value
        else:
            lumps["error" if c.node.kind in ("error", "mlp") else "bias" if c.node.kind == "bias" else "pruned"] \
                += c.value
    for kind, value in lumps.items():
        route = (*parent, Node(kind, parent[-1].layer, parent[-1].pos, parent=tag))
        graph.edges[(route, parent)] = value
        graph.values[route] = value


def format_paths(graph: PathGraph, tokens: list[str]) -> str:
    """One line per path, upstream first, as the paper's notebooks print them."""
    lines = []
    for p in graph.paths:
        chain = " -> ".join(n.describe(tokens) for n in reversed(p.nodes))
        lines.append(f"{p.value:+.4f}  {chain}")
    return "\n".join(lines) + "\n"
