"""Every source a hook of the frozen replay is linear in, as columns: the active features, each
MLP's error (or the whole MLP where no transcoder replaces it), the biases and the embeddings.
`Sources.edges` turns the replay's gradients into one row of edge weights per cotangent:
`edge = source value x d(target)/d(source)`, which sums to the target exactly (it is linear)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tcx.circuits.nodes import Node
from tcx.circuits.replacement import ReplacementModel
from tcx.models.replay import Leaves


class Sources:
    def __init__(self, rm: ReplacementModel):
        self.rm = rm
        L, P = rm.n_layers, rm.n_pos
        feats = []
        for layer, c in sorted(rm.codes.items()):
            pos, idx = c.z.nonzero(as_tuple=True)
            feats.append(torch.stack([torch.full_like(pos, layer), pos, idx], 1))
        self.features: Int[Tensor, "feature 3"] = torch.cat(feats) if feats else torch.zeros(0, 3, dtype=torch.long)
        """(layer, pos, index) of every active feature, by layer then position."""
        self.acts = torch.cat([rm.codes[layer].z[self.features[self.features[:, 0] == layer, 1],
                                                  self.features[self.features[:, 0] == layer, 2]]
                               for layer in sorted(rm.codes)]) if len(self.features) else torch.zeros(0, dtype=rm.dtype)
        self.constants = torch.stack([rm.codes[i].error if i in rm.codes else rm.leaves.mlp[i] for i in range(L)])
        """[layer pos d]: the error where a transcoder sits, else the real MLP's whole write."""
        self._nodes = self._column_nodes()
        self.n_features = len(self.features)
        self.groups: dict[tuple[int, int], Tensor] = {}
        """(layer, pos) -> the feature columns active there."""
        for f, (layer, p) in enumerate(self.features[:, :2].tolist()):
            self.groups.setdefault((layer, p), []).append(f)
        self.groups = {k: torch.tensor(v) for k, v in self.groups.items()}
        self.n_cols = self.n_features + L * P + (L + 2) + P

    # -- column bookkeeping --------------------------------------------------------------------
    def column_nodes(self) -> list[Node]:
        return self._nodes

    def _column_nodes(self) -> list[Node]:
        rm, L, P = self.rm, self.rm.n_layers, self.rm.n_pos
        nodes = [Node("feature", lyr, p, i) for lyr, p, i in self.features.tolist()]
        nodes += [Node("error" if lyr in rm.codes else "mlp", lyr, p) for lyr in range(L) for p in range(P)]
        nodes += [Node("bias", k - 1) for k in range(L + 2)]
        return nodes + [Node("embedding", None, p, int(rm.tokens[p])) for p in range(P)]

    def active(self) -> list[tuple[int, int, int, float]]:
        """(layer, pos, index, activation) of every active feature."""
        return [(*f, float(a)) for f, a in zip(self.features.tolist(), self.acts, strict=True)]

    # -- edges ---------------------------------------------------------------------------------
    @torch.no_grad()
    def edges(self, g: Leaves) -> Float[Tensor, "batch col"]:
        rm = self.rm
        batch = g.embed.shape[0]
        feature_cols = torch.zeros(batch, self.n_features, dtype=rm.dtype)
        for (layer, p), cols in self.groups.items():  # only the active features' decoder rows
            W_dec = rm.codes[layer].W_dec[self.features[cols, 2]]
            feature_cols[:, cols] = (g.mlp[:, layer, p] @ W_dec.T) * self.acts[cols]
        constant_cols = torch.einsum("blpd,lpd->blp", g.mlp, self.constants).flatten(1)
        bias = g.gain.clone()
        for layer, c in rm.codes.items():  # b_dec sits in the MLP write
            bias[:, layer + 1] += g.mlp[:, layer].sum(1) @ c.b_dec
        embed = torch.einsum("bpd,pd->bp", g.embed, rm.leaves.embed)
        return torch.cat([feature_cols, constant_cols, bias, embed], 1)

    def feature_cotangents(self, rows: list[int]) -> dict[str, Float[Tensor, "batch pos d"]]:
        """One cotangent per feature: its encoder row at its input hook and position."""
        rm, cots = self.rm, {}
        for b, f in enumerate(rows):
            layer, p, i = self.features[f].tolist()
            c = rm.codes[layer]
            hook = c.source.input_hook
            if hook not in cots:
                cots[hook] = torch.zeros(len(rows), rm.n_pos, c.x.shape[-1], dtype=rm.dtype)
            cots[hook][b, p] = c.W_enc[:, i]
        return cots

    def preactivations(self, rows: list[int]) -> Float[Tensor, " batch"]:
        """`x . W_enc[:, i]` (no b_enc) from the clean run: what each feature's edges must sum to."""
        rm = self.rm
        out = [rm.codes[lyr].x[p] @ rm.codes[lyr].W_enc[:, i] for lyr, p, i in self.features[rows].tolist()]
        return torch.stack(out) if out else torch.zeros(0, dtype=rm.dtype)
