"""The Lightning data module: batches of the activation stream from the current global step on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from tcx.activations.stream import ActivationStream
from tcx.config import TrainerConfig
from tcx.data.windows import TokenWindows
from tcx.models.lm import LanguageModel


class _Steps(IterableDataset):
    """The whole run is one epoch of `stop` batches. Each iteration starts at the trainer's current
    step: after a resume Lightning believes it is `global_step` batches into that epoch, and this
    is what makes it so (a loader that restarted, or whose length were the remaining steps, would
    replay batches)."""

    def __init__(self, stream: ActivationStream, start: Callable[[], int], stop: int, rank: int,
                 world: int):
        self.stream, self.start, self.stop, self.rank, self.world = stream, start, stop, rank, world

    def __len__(self) -> int:
        return self.stop

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for step in range(self.start(), self.stop):
            batch = self.stream.batch(step)
            yield {site: rows.chunk(self.world)[self.rank] for site, rows in batch.items()}


def make_stream(lm: LanguageModel, windows: TokenWindows, hooks: Mapping[str, str], cfg: TrainerConfig,
                seed: int, cache_dir: str) -> ActivationStream:
    """The training stream of a run (`cache_dir` is the run's; used if `trainer.activation_cache`)."""
    return ActivationStream(lm, windows.train, windows.valid, hooks, cfg.batch_size, cfg.buffer_tokens,
                            cfg.model_batch_size, seed, cache_dir=cache_dir if cfg.activation_cache else None)


class ActivationData(L.LightningDataModule):
    def __init__(self, lm: LanguageModel, windows: TokenWindows, hooks: Mapping[str, str],
                 cfg: TrainerConfig, seed: int, cache_dir: str):
        super().__init__()
        self.lm, self.windows, self.hooks, self.cfg, self.seed = lm, windows, hooks, cfg, seed
        self.cache_dir = cache_dir
        self.stream: ActivationStream | None = None

    def setup(self, stage: str) -> None:
        # Runs on every process once it has its device: the model goes where the dictionaries are.
        self.lm.bridge.to(self.trainer.strategy.root_device)
        self.stream = make_stream(self.lm, self.windows, self.hooks, self.cfg, self.seed, self.cache_dir)

    def train_dataloader(self) -> DataLoader:
        steps = _Steps(self.stream, lambda: self.trainer.global_step, self.cfg.max_steps,
                       self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(steps, batch_size=None)
