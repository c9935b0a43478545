"""The Lightning data module: batches of the activation stream from the current global step on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from tcx.activations.stream import ActivationStream
from tcx.config import TrainerConfig
from tcx.data.windows import TokenWindows
from tcx.models.lm import LanguageModel


class _Steps(IterableDataset):
    """Batches `start .. stop-1` of the stream; this rank's share of each when distributed."""

    def __init__(self, stream: ActivationStream, start: int, stop: int, rank: int, world: int):
        self.stream, self.start, self.stop, self.rank, self.world = stream, start, stop, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for step in range(self.start, self.stop):
            batch = self.stream.batch(step)
            yield {site: rows.chunk(self.world)[self.rank] for site, rows in batch.items()}


class ActivationData(L.LightningDataModule):
    def __init__(self, lm: LanguageModel, windows: TokenWindows, hooks: Mapping[str, str],
                 cfg: TrainerConfig, seed: int):
        super().__init__()
        self.lm, self.windows, self.hooks, self.cfg, self.seed = lm, windows, hooks, cfg, seed
        self.stream: ActivationStream | None = None

    def setup(self, stage: str) -> None:
        # Runs on every process once it has its device: the model goes where the dictionaries are.
        self.lm.bridge.to(self.trainer.strategy.root_device)
        self.stream = ActivationStream(
            self.lm, self.windows.train, self.windows.valid, self.hooks, self.cfg.batch_size,
            self.cfg.buffer_tokens, self.cfg.model_batch_size, self.seed)

    def train_dataloader(self) -> DataLoader:
        # Lightning restores global_step from a checkpoint before asking for the loader.
        steps = _Steps(self.stream, self.trainer.global_step, self.cfg.max_steps,
                       self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(steps, batch_size=None)
