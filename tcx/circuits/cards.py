"""Feature cards: what a feature reads and writes, from the weights alone (input-invariant).

The maps run through the replay with one position, every norm scale 1 (centring and weights kept,
as the paper freezes LayerNorm) and attention cut out of the residual path:
    de-embedding     W_E . M W_enc,j              which tokens drive the feature by themselves
    via head h       W_E . M W_V,h W_O,h M W_enc,j  the same through one head's OV circuit
    upstream         W_dec,i . M W_enc,j          per earlier transcoder layer, and through each head
    downstream       W_dec,j . M W_enc,k          per later transcoder layer
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.circuits.nodes import Node
from tcx.circuits.replacement import ReplacementModel
from tcx.models.replay import Leaves, invariant_replay
from tcx.runs.feature_notes import FeatureNotes


class Cards:
    def __init__(self, rm: ReplacementModel, top: int = 8):
        self.rm, self.top = rm, top
        w = rm.weights
        self.replay, self.leaves = invariant_replay(w, dict(rm.replay.skips))
        self.W_V = w.W_V.repeat_interleave(w.n_heads // w.W_V.shape[1], dim=1)  # [layer head d d_head]
        self.notes = {layer: FeatureNotes(c.source.features_file()) for layer, c in rm.codes.items()}

    def _token(self, i: int) -> str:
        return self.rm.token_text(i)

    def _ends(self, scores: Float[Tensor, " n"], label) -> tuple[list, list]:
        k = min(self.top, len(scores))
        top, bottom = scores.topk(k), (-scores).topk(k)
        return ([[label(int(i)), round(float(v), 4)] for v, i in zip(top.values, top.indices, strict=True)],
                [[label(int(i)), round(-float(v), 4)] for v, i in zip(bottom.values, bottom.indices, strict=True)])

    def _strongest(self, scores: Float[Tensor, " n"], label, k: int = 3) -> list:
        """The `k` largest |scores|, signed: inhibitory connections count too."""
        best = scores.abs().topk(min(k, len(scores))).indices.tolist()
        return [[label(i), round(float(scores[i]), 4)] for i in best]

    def _pull(self, hook: str, vectors: Float[Tensor, "batch d"]) -> Leaves:
        return self.replay.grads(self.leaves, {hook: vectors[:, None, :]}, through_attention=False)

    def feature(self, node: Node) -> dict[str, Any]:
        rm, w = self.rm, self.rm.weights
        c = rm.codes[node.layer]
        enc = c.W_enc[:, node.index]
        g = self._pull(c.source.input_hook, enc[None])
        top, bottom = self._ends(w.W_E @ g.embed[0, 0], self._token)
        upstream = []
        for layer in sorted(k for k in rm.codes if k < node.layer):
            scores = rm.codes[layer].W_dec @ g.mlp[0, layer, 0]
            upstream += self._strongest(scores, lambda i, layer=layer: f"L{layer}/{i}")
        heads = self._heads(node, g)
        leaves = self.leaves._replace(mlp=self.leaves.mlp.clone())
        leaves.mlp[node.layer, 0] = c.W_dec[node.index]
        with torch.no_grad():
            written = self.replay(leaves)
        downstream = []
        for layer in sorted(k for k in rm.codes if k > node.layer):
            x = written[rm.codes[layer].source.input_hook][0]
            downstream += self._strongest(x @ rm.codes[layer].W_enc, lambda i, layer=layer: f"L{layer}/{i}")
        z = float(c.z[node.pos, node.index]) if node.pos is not None else 0.0
        notes = self.notes[node.layer].of(node.index)  # what tcx-features read, when it has
        lines = [f"activation {z:.4g} at position {node.pos}", *notes.get("lines", []), *heads]
        return {"title": f"L{node.layer} feature {node.index}", "lines": lines, "examples": notes.get("examples", []),
                "de_embedding": {"top": top, "bottom": bottom},
                "upstream": sorted(upstream, key=lambda e: -abs(e[1]))[: self.top],
                "downstream": sorted(downstream, key=lambda e: -abs(e[1]))[: self.top]}

    def _heads(self, node: Node, g: Leaves, n: int = 3) -> list[str]:
        """The heads whose OV circuit reads most into the feature, with the tokens they carry."""
        rm, w = self.rm, self.rm.weights
        rows, names = [], []
        for layer in range(node.layer + 1 if rm.weights.family != "parallel" else node.layer):
            u = torch.einsum("d,hed->he", g.attn[0, layer, 0], w.W_O[layer])   # W_O,h . grad
            rows.append(torch.einsum("hde,he->hd", self.W_V[layer], u))
            names += [(layer, h) for h in range(w.n_heads)]
        if not rows:
            return []
        vectors = torch.cat(rows)
        best = vectors.norm(dim=-1).topk(min(n, len(vectors))).indices.tolist()
        lines = []
        for b in best:
            layer, h = names[b]
            pulled = self._pull(rm.replay.attention_input(layer), vectors[b][None])
            top, _ = self._ends(w.W_E @ pulled.embed[0, 0], self._token)
            lines.append(f"via L{layer}.H{h} OV (|{float(vectors[b].norm()):.3g}|): "
                         + ", ".join(repr(t) for t, _ in top[:5]))
        return lines

    def cards(self, nodes: list[Node], n_layers: int) -> dict[str, dict[str, Any]]:
        return {n.node_id(n_layers): self.feature(n) for n in nodes if n.kind == "feature"}
