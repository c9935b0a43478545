"""Direct effects: what each source writes into a node through the residual stream alone, the
attention layers' writes split by head and source position (the paper's path-search step).

A node is a *probe*: a cotangent on one hook of the frozen replay, in the target's units. Its
direct contributions (features, heads at source positions, errors, biases, tokens) sum exactly to
`probe . hook`. Expanding a feature or a head gives the probe of the next step upstream:
    feature i (layer l, pos p), reached with weight w = W_dec,i . g:   w W_enc,i  at its input hook
    head h (layer l) from source s:   sum_t A[h,t,s] W_V,h W_O,h g_t  at the attention's input at s
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.circuits.nodes import Node
from tcx.circuits.replacement import ReplacementModel
from tcx.circuits.sources import Sources


@dataclass
class Probe:
    hook: str
    cotangent: Float[Tensor, "pos d"]
    constant: float = 0.0
    """The part of the node's value nothing upstream explains: a feature's own `w b_enc`."""


@dataclass
class Contribution:
    node: Node
    value: float
    probe: Probe | None = None
    """How to expand it further (features and heads); None for sources."""


class Direct:
    def __init__(self, rm: ReplacementModel, sources: Sources):
        self.rm, self.sources = rm, sources
        with torch.no_grad():
            clean = rm.replay(rm.leaves)
        zero = torch.zeros((), dtype=rm.dtype)
        self.values = [rm.weights.values(i, clean[rm.replay.attention_input(i)], zero)
                       for i in range(rm.n_layers)]
        """[head pos d_head] per layer: each head's values without b_V (a bias source of its own)."""

    def contributions(self, probe: Probe) -> list[Contribution]:
        rm, src = self.rm, self.sources
        g = rm.replay.grads(rm.leaves, {probe.hook: probe.cotangent[None]}, through_attention=False)
        row = src.edges(g)[0]
        nodes = src.column_nodes()
        out = [Contribution(n, float(v)) for n, v in zip(nodes, row.tolist(), strict=True) if v != 0]
        for c in out:
            if c.node.kind == "feature":
                c.probe = self._feature_probe(c.node, g)
        bias_extra: dict[int, float] = {}
        for layer in range(rm.n_layers):
            g_attn = g.attn[0, layer]
            if not g_attn.any():
                continue
            out += self._heads(layer, g_attn)
            bias_extra[layer] = float(rm.weights.value_bias(layer) @ g_attn.sum(0))
        for c in out:
            if c.node.kind == "bias" and c.node.layer in bias_extra:
                c.value += bias_extra.pop(c.node.layer)
        out += [Contribution(Node("bias", layer), v) for layer, v in bias_extra.items() if v != 0]
        return out

    def _feature_probe(self, node: Node, g) -> Probe:
        c = self.rm.codes[node.layer]
        w = g.mlp[0, node.layer, node.pos] @ c.W_dec[node.index]
        cot = torch.zeros(self.rm.n_pos, c.x.shape[-1], dtype=self.rm.dtype)
        cot[node.pos] = w * c.W_enc[:, node.index]
        return Probe(c.source.input_hook, cot, float(w * c.b_enc[node.index]))

    def _heads(self, layer: int, g_attn: Float[Tensor, "pos d"]) -> list[Contribution]:
        rm, w = self.rm, self.rm.weights
        pattern, v = rm.replay.frozen.patterns[layer], self.values[layer]
        u = torch.einsum("td,hed->hte", g_attn, w.W_O[layer])                   # W_O,h g_t
        pulled = torch.einsum("hts,hte->hse", pattern, u)                        # sum_t A[h,t,s] W_O,h g_t
        contrib = (pulled * v).sum(-1)                                            # [head pos]
        W_V = w.W_V[layer].repeat_interleave(w.n_heads // w.W_V.shape[1], dim=0)  # [head d d_head]
        hook = rm.replay.attention_input(layer)
        out = []
        last = int(g_attn.abs().sum(-1).nonzero().max())  # the latest position the probe reads
        for h, s in contrib.nonzero().tolist():
            cot = torch.zeros(rm.n_pos, W_V.shape[1], dtype=rm.dtype)
            cot[s] = W_V[h] @ pulled[h, s]
            out.append(Contribution(Node("attention", layer, last, h, s), float(contrib[h, s]), Probe(hook, cot)))
        return out
