"""Training tokens per second."""

from __future__ import annotations

import time

import lightning as L


class Throughput(L.Callback):
    """Training tokens per second of this process's run, shown in the progress bar every `show_every`
    steps."""

    def __init__(self, batch_size: int, show_every: int = 1):
        self.batch_size, self.show_every = batch_size, show_every
        self.start: tuple[float, int] | None = None
        self.tokens_per_second = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:  # the clock starts at the first batch: loading is not throughput
            self.start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t0, step0 = self.start
        elapsed = time.perf_counter() - t0
        if elapsed > 0:
            self.tokens_per_second = (trainer.global_step - step0) * self.batch_size / elapsed
        if trainer.global_step % self.show_every == 0:
            pl_module.log("tok/s", round(self.tokens_per_second), prog_bar=True, logger=False)
