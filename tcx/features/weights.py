"""A feature's weights read in tokens, in the model's units (input-invariant, as `tcx.circuits.cards`):
    de-embedding   W_E . M W_enc,j   which tokens drive a transcoder feature by themselves, through
                                     the residual stream with attention cut and norms frozen at
                                     scale 1 (centring and weights kept), as the paper does
    logits         W_dec,j . M W_U   which next tokens a causal model's feature promotes and
                                     suppresses, through the final norm frozen likewise
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tcx.models.family import Weights
from tcx.models.replay import invariant_replay
from tcx.runs.record import OpenedDictionary


def _ends(scores: Float[Tensor, "batch vocab"], k: int) -> tuple[Int[Tensor, "batch k"], ...]:
    top, bottom = scores.topk(k, dim=-1), scores.topk(k, dim=-1, largest=False)
    return top.indices, top.values, bottom.indices, bottom.values


class TokenMaps:
    def __init__(self, lm, top: int = 10, chunk: int = 256):
        self.w = Weights.of(lm.bridge, torch.float32)
        self.top, self.chunk = top, chunk
        self.replay, self.leaves = invariant_replay(self.w)

    def de_embedding(self, d: OpenedDictionary, features: Int[Tensor, " n"]) -> list[tuple[Tensor, ...]]:
        """Top and bottom tokens of W_E . M W_enc for a transcoder's features, in chunks."""
        enc = d.dictionary.W_enc.detach().float()
        out = []
        for part in features.split(self.chunk):
            g = self.replay.grads(self.leaves, {d.input_hook: enc[:, part].T[:, None, :]}, through_attention=False)
            out.append(_ends(g.embed[:, 0] @ self.w.W_E.T, self.top))
        return [torch.cat(parts) for parts in zip(*out, strict=True)] if out else []

    def logits(self, d: OpenedDictionary, features: Int[Tensor, " n"]) -> list[Tensor] | None:
        """Top and bottom tokens of W_dec . M W_U (causal models only: an encoder has no unembedding)."""
        if self.w.W_U is None:
            return None
        dec = d.dictionary.W_dec.detach().float()[features]
        norm = self.w.ln_final
        x = dec - dec.mean(-1, keepdim=True) if norm.centred else dec
        return list(_ends((x * norm.w) @ self.w.W_U, self.top))
