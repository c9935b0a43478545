"""`GroupTop`: the k entries with the largest key in each of many groups, kept in fixed memory.

Every batch offers candidates (group, key, payload); the store keeps, per group, the k best seen so
far. With key = activation it is a bounded top-k heap per feature; with key = a uniform random
number it is a reservoir sample (the k smallest of n uniform keys are a uniform k-subset of the n).
Memory is [groups, k] whatever the corpus length.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def top_per_group(group: Int[Tensor, " n"], key: Float[Tensor, " n"], k: int
                  ) -> tuple[Int[Tensor, " m"], Int[Tensor, " m"]]:
    """Indices of the entries ranked < k by descending key within their group, and those ranks."""
    order = key.argsort(descending=True, stable=True)
    order = order[group[order].argsort(stable=True)]        # by group, then key descending
    g = group[order]
    starts = torch.ones_like(g, dtype=torch.bool)
    starts[1:] = g[1:] != g[:-1]
    first = torch.cummax(torch.where(starts, torch.arange(len(g)), 0), 0).values
    rank = torch.arange(len(g)) - first
    keep = rank < k
    return order[keep], rank[keep]


class GroupTop:
    """Per group, the k candidates with the largest keys, with their payload columns."""

    def __init__(self, groups: int, k: int, payload: dict[str, tuple[tuple[int, ...], torch.dtype]]):
        self.groups, self.k = groups, k
        self.key = torch.full((groups, k), -torch.inf)
        self.payload = {name: torch.zeros(groups, k, *shape, dtype=dtype) for name, (shape, dtype) in payload.items()}

    @property
    def filled(self) -> torch.Tensor:
        return self.key > -torch.inf

    def threshold(self) -> Float[Tensor, " groups"]:
        """The key a candidate must beat to enter its group (-inf while the group has room)."""
        return self.key[:, -1]

    def offer(self, group: Int[Tensor, " n"], key: Float[Tensor, " n"], payload: dict[str, Tensor],
              regroup=None) -> None:
        """Merge candidates into the store. The held entries compete again; `regroup(payload)`, when
        given, first assigns them new groups from their old group and payload (the bands do this when
        a feature's range doubles)."""
        if len(group) == 0 and regroup is None:
            return
        held_group, held = self.entries()
        if regroup is not None:
            held_group = regroup(held_group, held)
        self.merge(torch.cat([held_group, group]), torch.cat([held.pop("key"), key]),
                   {n: torch.cat([held[n], payload[n].to(held[n].dtype)]) for n in self.payload})

    def merge(self, group: Int[Tensor, " n"], key: Float[Tensor, " n"], payload: dict[str, Tensor]) -> None:
        """Replace the store by the top k of these entries per group."""
        idx, rank = top_per_group(group, key, self.k)
        g = group[idx]
        self.key = torch.full_like(self.key, -torch.inf)
        self.key[g, rank] = key[idx]
        for name, t in self.payload.items():
            fresh = torch.zeros_like(t)
            fresh[g, rank] = payload[name][idx].to(t.dtype)
            self.payload[name] = fresh

    def entries(self) -> tuple[Int[Tensor, " n"], dict[str, Tensor]]:
        """Every held entry's group and payload (for re-grouping)."""
        held = self.filled.reshape(-1)
        group = torch.arange(self.groups).repeat_interleave(self.k)[held]
        return group, {"key": self.key.reshape(-1)[held],
                       **{n: t.reshape(-1, *t.shape[2:])[held] for n, t in self.payload.items()}}
