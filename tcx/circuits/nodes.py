"""Nodes of a circuit and their ids, in circuit-tracer's scheme (`frontend/graph_models.py`) where it
is unambiguous: features `{layer}_{index}_{pos}`, tokens `E_{token}_{pos}`, logits
`{n_layers+1}_{token}_{pos}`. Its error id `0_{layer}_{pos}` equals the id of layer-0 feature `layer` at
the same position, so tcx writes `err_{layer}_{pos}`; tcx's own kinds get a letter (M real MLP,
P pruned remainder, B bias, A attention head at a source position, T a non-logit target)."""

from __future__ import annotations

from dataclasses import dataclass

FEATURE_TYPE = {
    "feature": "cross layer transcoder", "error": "mlp reconstruction error", "embedding": "embedding",
    "logit": "logit", "mlp": "mlp", "pruned": "pruned", "bias": "bias", "attention": "attention",
    "target": "target",
}


@dataclass(frozen=True)
class Node:
    kind: str
    """feature | error | mlp | pruned | bias | embedding | attention | logit | target"""
    layer: int | None = None
    """Block index; a bias node's slot (-1 the embedding, n_layers the final norm and unembedding)."""
    pos: int | None = None
    index: int | None = None
    """Feature index, token id (embedding, logit) or head (attention)."""
    source: int | None = None
    """Attention: the source position the head reads."""
    parent: int | None = None
    """Path-search remainders (error, bias, pruned) belong to one expanded node: a tag for it."""

    def node_id(self, n_layers: int) -> str:
        k, layer, pos, i = self.kind, self.layer, self.pos, self.index
        return {
            "feature": f"{layer}_{i}_{pos}", "error": f"err_{layer}_{pos}", "embedding": f"E_{i}_{pos}",
            "logit": f"{n_layers + 1}_{i}_{pos}", "mlp": f"M_{layer}_{pos}", "pruned": f"P_{layer}_{pos}",
            "bias": f"B_{layer}", "attention": f"A_{layer}_{i}_{self.source}_{pos}", "target": f"T_{pos}",
        }[k]

    def layer_label(self, n_layers: int) -> str:
        """circuit-tracer's `layer` field: the block, E for embeddings, n_layers+1 for targets."""
        if self.kind == "embedding":
            return "E"
        if self.kind in ("logit", "target") or (self.kind == "bias" and self.layer == n_layers):
            return str(n_layers + 1)
        return "E" if self.layer is None or self.layer < 0 else str(self.layer)

    def describe(self, tokens: list[str], target: str | None = None) -> str:
        """`target`: the label of the target this graph explains (`logit(' r')`), which its target node
        shows: the token at a logit's position is the one it reads, not the one it predicts."""
        def at(pos: int | None) -> str:
            return f"@{pos} {tokens[pos]!r}" if pos is not None and 0 <= pos < len(tokens) else ""

        where, k = at(self.pos), self.kind
        if self.parent is not None:
            return {"error": "MLP errors", "bias": "biases", "pruned": "other sources"}[k] + " upstream (remainder)"
        if k == "attention":
            return f"L{self.layer} head {self.index} from {at(self.source)} to {where}"
        if k == "bias":
            return {-1: "embedding biases"}.get(self.layer, f"L{self.layer} biases" if self.layer is not None
                                                 else "biases")
        if target is not None and k in ("logit", "target"):
            return f"{target} at {where}".strip() if where else target
        names = {"feature": f"L{self.layer} feature {self.index}", "error": f"L{self.layer} MLP error",
                 "mlp": f"L{self.layer} MLP (no transcoder)", "pruned": f"L{self.layer} other sources",
                 "embedding": "token", "logit": "logit", "target": "target"}
        return f"{names[k]} {where}".strip()
