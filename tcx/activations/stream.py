"""`ActivationStream`: the training batch of step `s` is a pure function of `s`.

The training windows, in a seeded order that is drawn anew each epoch, form one long stream of
token positions. Chunk `c` is positions `[c*C, (c+1)*C)`; the model is run on the windows that
cover it and its activations are shuffled with a generator seeded by `(seed, c)`; batch `s` is
slice `s % batches_per_chunk` of chunk `s // batches_per_chunk`. Shuffling within a chunk does
what SAELens' and sparsify's activation buffers do, and because nothing depends on history a
resumed run recomputes exactly the batches an uninterrupted run would have seen: no buffer needs
checkpointing, and kill-and-resume is bit-exact. For the same reason chunks can be cached on disk
(`cache_dir`, see cache.py) and read back by any later run in place of the model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tcx.activations.cache import ActivationCache, StreamKey
from tcx.digest import tensors_digest
from tcx.models.lm import LanguageModel

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, index) pairs over generator seeds


def mix_seed(seed: int, index: int, stream: int) -> int:
    return (seed * _MIX + index * 0x632BE59BD9B4E019 + stream) & ((1 << 63) - 1)


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the data-parallel run this process is in; (0, 1) alone."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ActivationStream:
    def __init__(self, lm: LanguageModel, windows: Int[Tensor, "window ctx"], valid: slice,
                 hooks: Mapping[str, str], batch_size: int, chunk_tokens: int,
                 model_batch_size: int, seed: int, dtype: torch.dtype = torch.float32,
                 cache_dir: str | None = None):
        """`hooks` maps site names (mlp_in, ...) to hookpoints; batches are dicts keyed by site.
        With `cache_dir`, chunks are read from the activation cache there, and written to it when
        missing."""
        self.lm = lm
        self.windows = windows
        self.valid = valid
        self.hooks = dict(hooks)
        self.batch_size = batch_size
        self.batches_per_chunk = max(1, -(-chunk_tokens // batch_size))
        self.chunk_tokens = self.batches_per_chunk * batch_size
        self.model_batch_size = model_batch_size
        self.seed = seed
        self.dtype = dtype
        self.tokens_per_window = len(range(windows.shape[1])[valid])
        self._cached: tuple[int, dict[str, Tensor]] | None = None
        self.model_seconds = 0.0
        """Time spent running the model (for where-the-time-went reports)."""
        self.model_rows = 0
        """Token positions this process ran the model on."""
        self.cache = ActivationCache(cache_dir, self.key(), self.hooks) if cache_dir else None

    def key(self) -> StreamKey:
        return StreamKey(
            model=self.lm.spec.name, settings=self.lm.spec.settings_digest(), weights=self.lm.weights_digest(),
            windows=tensors_digest([self.windows]), valid=(self.valid.start, self.valid.stop),
            seed=self.seed, chunk_tokens=self.chunk_tokens, model_batch_size=self.model_batch_size,
            dtype=str(self.dtype).removeprefix("torch."))

    def chunks_for(self, steps: int) -> int:
        """Chunks that steps 0..steps-1 read."""
        return -(-steps // self.batches_per_chunk)

    def _window_order(self, first: int, last: int) -> list[int]:
        n = len(self.windows)
        order: list[int] = []
        for epoch in range(first // n, last // n + 1):
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1))
            perm = torch.randperm(n, generator=gen)
            lo, hi = max(first, epoch * n) - epoch * n, min(last, epoch * n + n - 1) - epoch * n
            order.extend(perm[lo: hi + 1].tolist())
        return order

    def activations(self, tokens: Int[Tensor, "window ctx"]) -> dict[str, Float[Tensor, "row d"]]:
        """Activations at every site for the valid positions of `tokens`, flattened to rows."""
        parts: dict[str, list[Tensor]] = {site: [] for site in self.hooks}
        for start in range(0, len(tokens), self.model_batch_size):
            cache = self.lm.run_to(tokens[start: start + self.model_batch_size],
                                   list(self.hooks.values()))
            for site, hook in self.hooks.items():
                act = cache[hook][:, self.valid]
                parts[site].append(act.reshape(-1, act.shape[-1]).to(self.dtype))
        self.model_rows += len(tokens) * self.tokens_per_window
        return {site: torch.cat(p) for site, p in parts.items()}

    def shared_activations(self, tokens: Int[Tensor, "window ctx"]) -> dict[str, Float[Tensor, "row d"]]:
        """`activations(tokens)`, the model's work divided between data-parallel processes: process r
        runs windows r, r+W, r+2W, ... and all of them gather everyone's rows, so each holds the
        whole chunk (and the global batches of a single process) for 1/W of the model's work."""
        rank, world = _process_group()
        if world == 1 or len(tokens) < world:
            return self.activations(tokens)
        mine = self.activations(tokens[rank::world])
        per, most = self.tokens_per_window, -(-len(tokens) // world)
        out = {}
        for site, rows in mine.items():
            rows = rows.view(-1, per, rows.shape[-1])
            padded = torch.cat([rows, rows.new_zeros(most - len(rows), *rows.shape[1:])])
            parts = [torch.empty_like(padded) for _ in range(world)]
            torch.distributed.all_gather(parts, padded)
            # [W, most, per, d] -> window j*W + r is row j of process r
            out[site] = torch.stack(parts, 1).flatten(0, 1)[: len(tokens)].flatten(0, 1)
        return out

    def chunk(self, index: int) -> dict[str, Float[Tensor, "chunk_tokens d"]]:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        chunk = self.cache.load(index) if self.cache is not None else None
        if chunk is None:
            chunk = self.compute(index)
            if self.cache is not None and _process_group()[0] == 0:
                self.cache.save(index, chunk)
        self._cached = (index, chunk)
        return chunk

    def compute(self, index: int) -> dict[str, Float[Tensor, "chunk_tokens d"]]:
        """Chunk `index` from the model."""
        start_time = time.perf_counter()
        per = self.tokens_per_window
        first_pos, end_pos = index * self.chunk_tokens, (index + 1) * self.chunk_tokens
        first_w, last_w = first_pos // per, (end_pos - 1) // per
        tokens = self.windows[self._window_order(first_w, last_w)]
        acts = self.shared_activations(tokens)
        start = first_pos - first_w * per
        gen = torch.Generator().manual_seed(mix_seed(self.seed, index, 2))
        perm = torch.randperm(self.chunk_tokens, generator=gen).to(next(iter(acts.values())).device)
        chunk = {site: a[start: start + self.chunk_tokens][perm] for site, a in acts.items()}
        self.model_seconds += time.perf_counter() - start_time
        return chunk

    def batch(self, step: int) -> dict[str, Float[Tensor, "batch d"]]:
        index, offset = divmod(step, self.batches_per_chunk)
        rows = slice(offset * self.batch_size, (offset + 1) * self.batch_size)
        return {site: a[rows] for site, a in self.chunk(index).items()}
