"""What held-out text says about every feature of a dictionary, gathered in one pass in fixed memory.

The held-out windows are split in two halves by parity:
    read half   (even windows)  frequency, histogram and bands, top contexts, band samples, and each
                                feature's mean activation per token (what the dashboard shows and the
                                explanations are built from)
    test half   (odd windows)   uniform samples of firing contexts, random contexts, and the error of
                                predicting each activation from its token alone (what the automatic
                                scores are measured on: explanations never see their test text)
A context is the `c` tokens either side of a position (inside the window's corpus tokens); its
per-token activations are stored with it, NaN outside the window.

Memory is fixed per feature except for one store: the read half's activation summed per (token,
feature) pair that ever fired, which grows with the distinct pairs the text holds (sub-linearly in
its length: 255k pairs, 4 MB, for 131k MiniLM tokens read by 3,072 features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tcx.features.heap import GroupTop
from tcx.features.histogram import Histogram


@dataclass
class Batch:
    """One batch of windows through one dictionary: codes at the corpus positions."""

    z: Float[Tensor, "window pos d_sae"]
    tokens: Int[Tensor, "window pos"]
    first: int
    """The index of the batch's first window in its half (read or test) of the held-out windows."""

    @property
    def n_pos(self) -> int:
        return self.z.shape[1]

    def firing(self) -> tuple[Int[Tensor, " n"], Int[Tensor, " n"], Int[Tensor, " n"], Float[Tensor, " n"]]:
        w, p, f = (self.z > 0).nonzero(as_tuple=True)
        return w, p, f, self.z[w, p, f]

    def location(self, w: Int[Tensor, " n"], p: Int[Tensor, " n"]) -> Int[Tensor, " n"]:
        return (self.first + w) * self.n_pos + p

    def context(self, w: Int[Tensor, " n"], p: Int[Tensor, " n"], f: Int[Tensor, " n"], c: int
                ) -> Float[Tensor, "n ctx"]:
        """Feature f's activation at the 2c+1 positions around (w, p); NaN off the window."""
        where = p[:, None] + torch.arange(-c, c + 1)
        inside = (where >= 0) & (where < self.n_pos)
        acts = self.z[w[:, None], where.clamp(0, self.n_pos - 1), f[:, None]].float()
        return torch.where(inside, acts, torch.nan)


def contexts(tokens: Int[Tensor, "window pos"], loc: Int[Tensor, " n"], c: int) -> Int[Tensor, "n ctx"]:
    """The 2c+1 token ids around each location (window * n_pos + pos), -1 off the window."""
    n_pos = tokens.shape[1]
    w, p = loc // n_pos, loc % n_pos
    where = p[:, None] + torch.arange(-c, c + 1)
    inside = (where >= 0) & (where < n_pos)
    return torch.where(inside, tokens[w[:, None], where.clamp(0, n_pos - 1)], -1)


def _payload(c: int) -> dict:
    return {"loc": ((), torch.long), "value": ((), torch.float32), "acts": ((2 * c + 1,), torch.float32)}


def _offer(store: GroupTop, b: Batch, firing: tuple[Tensor, ...], group: Tensor, key: Tensor, c: int,
           regroup=None) -> None:
    """Offer firing entries (window, pos, feature, value) of a batch to a store, with their contexts."""
    w, p, f, v = firing
    store.offer(group, key, {"loc": b.location(w, p), "value": v.float(), "acts": b.context(w, p, f, c)}, regroup)


class Reader:
    """The read half: what a dashboard shows, and per-token means for the context-free share."""

    def __init__(self, d_sae: int, vocab: int, top: int = 20, per_band: int = 5, c: int = 10,
                 bands: int = 10, seed: int = 0):
        self.d_sae, self.vocab, self.c = d_sae, vocab, c
        self.rows = 0
        self.fired = torch.zeros(d_sae, dtype=torch.long)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.hist = Histogram(d_sae, bins=4 * bands, bands=bands)
        self.top = GroupTop(d_sae, top, _payload(c))
        self.bands = GroupTop(d_sae * bands, per_band, _payload(c))
        self.token_rows = torch.zeros(vocab, dtype=torch.long)
        self.sum_keys = torch.zeros(0, dtype=torch.long)    # token * d_sae + feature, sorted, unique
        self.sum_values = torch.zeros(0, dtype=torch.float64)
        self.pending: list[tuple[Tensor, Tensor]] = []
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, b: Batch) -> None:
        w, p, f, v = b.firing()
        self.rows += b.z.shape[0] * b.n_pos
        self.fired += torch.bincount(f, minlength=self.d_sae)
        self.act_sum.index_add_(0, f, v.double())
        self.token_rows += torch.bincount(b.tokens.reshape(-1), minlength=self.vocab)
        self.pending.append((b.tokens[w, p] * self.d_sae + f, v.double()))
        if sum(len(k) for k, _ in self.pending) > 1 << 22:
            self._flush()
        grown = self.hist.add(f, v)
        hot = v > self.top.threshold()[f]
        _offer(self.top, b, (w[hot], p[hot], f[hot], v[hot]), f[hot], v[hot], self.c)
        key = torch.rand(len(v), generator=self.gen)
        band = f * self.hist.bands + self.hist.band_of(f, v)
        moved = torch.zeros(self.d_sae, dtype=torch.bool)
        moved[grown] = True
        lucky = moved[f] | (key > self.bands.threshold()[band])
        regroup = self._band_group if len(grown) else None
        _offer(self.bands, b, (w[lucky], p[lucky], f[lucky], v[lucky]), band[lucky], key[lucky], self.c, regroup)

    def _band_group(self, group: Int[Tensor, " n"], held: dict[str, Tensor]) -> Int[Tensor, " n"]:
        """Held band samples re-assigned after their features' scales doubled."""
        f = group // self.hist.bands
        return f * self.hist.bands + self.hist.band_of(f, held["value"])

    def _flush(self) -> None:
        """Fold the pending (token, feature) sums into the sorted store."""
        keys = torch.cat([self.sum_keys, *(k for k, _ in self.pending)])
        values = torch.cat([self.sum_values, *(v for _, v in self.pending)])
        self.sum_keys, where = keys.unique(sorted=True, return_inverse=True)
        self.sum_values = torch.zeros(len(self.sum_keys), dtype=torch.float64).index_add_(0, where, values)
        self.pending = []

    def token_sums(self) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"]]:
        """The read half's summed activation per (token, feature) pair that ever fired, keyed
        token * d_sae + feature (sorted)."""
        self._flush()
        return self.sum_keys, self.sum_values


class Scorer:
    """The test half: firing contexts sampled uniformly per feature, random contexts with which
    features fire anywhere in them, and the squared error of the read half's per-token means."""

    def __init__(self, reader: Reader, positives: int = 20, negatives: int = 512, seed: int = 1,
                 prior: float = 1.0):
        self.c, self.d_sae = reader.c, reader.d_sae
        self.positives = GroupTop(reader.d_sae, positives, _payload(reader.c))
        self.max_negatives = negatives
        self.negative_loc: list[Tensor] = []
        self.negative_fires: list[Tensor] = []
        # prediction for token t: (sum_t + prior * mean) / (n_t + prior), the per-token mean shrunk
        # towards the overall mean (a token seen once does not get to explain its own variance)
        self.keys, sums = reader.token_sums()
        self.weight = 1.0 / (reader.token_rows.double() + prior)
        self.shares = sums * self.weight[self.keys // self.d_sae]
        self.base = prior * reader.act_sum / max(reader.rows, 1)
        self.rows, self.sq_err = 0, torch.zeros(reader.d_sae, dtype=torch.float64)
        self.act_sum = torch.zeros(reader.d_sae, dtype=torch.float64)
        self.act_sq = torch.zeros(reader.d_sae, dtype=torch.float64)
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, b: Batch) -> None:
        w, p, f, v = b.firing()
        key = torch.rand(len(v), generator=self.gen)
        lucky = key > self.positives.threshold()[f]
        _offer(self.positives, b, (w[lucky], p[lucky], f[lucky], v[lucky]), f[lucky], key[lucky], self.c)
        self._negatives(b)
        self._token_error(b)

    def _negatives(self, b: Batch) -> None:
        have = sum(len(x) for x in self.negative_loc)
        if have >= self.max_negatives:
            return
        n_win = min(b.z.shape[0], self.max_negatives - have)
        w = torch.arange(n_win)
        p = torch.randint(0, b.n_pos, (n_win,), generator=self.gen)
        lo, hi = (p - self.c).clamp(min=0), (p + self.c + 1).clamp(max=b.n_pos)
        self.negative_loc.append(b.location(w, p))
        self.negative_fires.append(torch.stack([(b.z[i, lo[i]:hi[i]] > 0).any(0) for i in range(n_win)]))

    def _token_error(self, b: Batch) -> None:
        """Sum over rows of (z - prediction)^2, the prediction being the read half's mean of z for
        the row's token (its overall mean for a token the read half never saw)."""
        tokens = b.tokens.reshape(-1)
        z = b.z.reshape(-1, self.d_sae)
        vocab_ids, row_of = tokens.unique(return_inverse=True)
        pred = (self.weight[vocab_ids, None] * self.base[None, :]).float()
        d = self.d_sae  # the batch's tokens' pairs are contiguous runs of the sorted keys
        lo = torch.searchsorted(self.keys, vocab_ids * d)
        hi = torch.searchsorted(self.keys, (vocab_ids + 1) * d)
        run = torch.repeat_interleave(torch.arange(len(vocab_ids)), hi - lo)
        at = torch.arange(int((hi - lo).sum())) - torch.repeat_interleave((hi - lo).cumsum(0) - (hi - lo), hi - lo)
        pick = lo[run] + at
        pred[run, self.keys[pick] % d] += self.shares[pick].float()
        self.sq_err += (z - pred[row_of]).pow(2).sum(0, dtype=torch.float64)
        self.rows += len(z)
        self.act_sum += z.sum(0, dtype=torch.float64)
        self.act_sq += z.pow(2).sum(0, dtype=torch.float64)

    def context_free(self) -> Float[Tensor, " d_sae"]:
        """1 - error/variance on the test half, floored at 0: the share of each feature's activation
        variance its token alone explains (NaN for a feature that never fires in the test half)."""
        variance = self.act_sq - self.act_sum.pow(2) / max(self.rows, 1)
        return torch.where(variance > 0, (1 - self.sq_err / variance).clamp(min=0), torch.nan)

    def negative_contexts(self, tokens: Int[Tensor, "window pos"]
                          ) -> tuple[Int[Tensor, "n ctx"], Bool[Tensor, "n d_sae"]]:
        """The random contexts' token ids (from the test half's `tokens`) and which features fire in each."""
        if not self.negative_loc:
            return torch.zeros(0, 2 * self.c + 1, dtype=torch.long), torch.zeros(0, self.d_sae, dtype=torch.bool)
        return contexts(tokens, torch.cat(self.negative_loc), self.c), torch.cat(self.negative_fires)

    def firing_contexts(self, tokens: Int[Tensor, "window pos"], feature: int
                        ) -> tuple[Int[Tensor, "n ctx"], Float[Tensor, "n ctx"]]:
        """The sampled firing contexts of `feature`: token ids and its activations."""
        held = self.positives.key[feature] > -torch.inf
        return (contexts(tokens, self.positives.payload["loc"][feature][held], self.c),
                self.positives.payload["acts"][feature][held])
