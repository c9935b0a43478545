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

UNEXPANDED = ("error", "mlp", "bias", "embedding", "pruned")


@dataclass
class Path:
    nodes: list[Node]
    value: float
    probe: Probe | None


@dataclass
class PathGraph:
    paths: list[Path]
    edges: dict[tuple[Node, Node], float] = field(default_factory=dict)
    """(child, parent) -> contribution of child to the target through parent."""
    values: dict[Node, float] = field(default_factory=dict)

    def remainders(self) -> dict[Node, float]:
        return {p: v for (c, p), v in self.edges.items() if c.kind == "pruned"}


def search(direct: Direct, target: Target, target_node: Node, num_iters: int = 3, num_branches: int = 15,
           progress: bool = True) -> PathGraph:
    if num_iters < 1 or num_branches < 1:
        raise ValueError(f"circuit.search.num_iters={num_iters} and num_branches={num_branches} must be >= 1.")
    root = Probe(target.hook, target.cotangent, target.constant)
    graph = PathGraph([Path([target_node], target.value, root)], values={target_node: target.value})
    frontier = graph.paths
    expanded: dict[Node, list[Contribution]] = {}
    constants: dict[Node, float] = {}
    for _ in tqdm(range(num_iters), desc="path search", disable=not progress):
        candidates: list[Path] = []
        for path in frontier:
            last = path.nodes[-1]
            if path.probe is None or last.kind in UNEXPANDED:
                candidates.append(path)
                continue
            if last not in expanded:
                expanded[last] = direct.contributions(path.probe)
                constants[last] = path.probe.constant
                graph.values.setdefault(last, path.value)
            candidates += [Path([*path.nodes, c.node], c.value, c.probe) for c in expanded[last]
                           if c.node not in path.nodes and c.node.kind not in ("error", "mlp", "bias")]
        frontier = sorted(candidates, key=lambda p: -abs(p.value))[:num_branches]
    graph.paths = frontier
    kept = {(p.nodes[k + 1], p.nodes[k]) for p in frontier for k in range(len(p.nodes) - 1)}
    for parent, children in expanded.items():
        _merge(graph, parent, children, kept, constants[parent])
    return graph


def _merge(graph: PathGraph, parent: Node, children: list[Contribution], kept: set[tuple[Node, Node]],
           constant: float) -> None:
    """The parent's children on kept paths, and error, bias and pruned remainders summing the rest
    (the bias lump includes the parent's own constant: b_enc, b_U)."""
    lumps = {"error": 0.0, "bias": constant, "pruned": 0.0}
    for c in children:
        if (c.node, parent) in kept:
            graph.edges[(c.node, parent)] = c.value
            graph.values.setdefault(c.node, c.value)
        else:
            lumps["error" if c.node.kind in ("error", "mlp") else "bias" if c.node.kind == "bias" else "pruned"] \
                += c.value
    for kind, value in lumps.items():
        lump = Node(kind, parent.layer, parent.pos, parent=_uid(parent))
        graph.edges[(lump, parent)] = value
        graph.values[lump] = value


def _uid(parent: Node) -> int:
    """Remainder nodes belong to one parent: tag them with its hash so they never merge."""
    return hash(parent) & 0x7FFFFFFF


def format_paths(graph: PathGraph, tokens: list[str]) -> str:
    """One line per path, upstream first, as the paper's notebooks print them."""
    lines = []
    for p in graph.paths:
        chain = " -> ".join(n.describe(tokens) for n in reversed(p.nodes))
        lines.append(f"{p.value:+.4f}  {chain}")
    return "\n".join(lines) + "\n"
