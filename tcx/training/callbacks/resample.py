"""Restarting the dead features of penalty-sparsified kinds on the rows reconstructed worst."""

from __future__ import annotations

import lightning as L
import torch

from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.state import TrainingState


class Resample(L.Callback):
    """Every N steps, restart the dead features of the kinds that resample (`Dictionary.resamples`:
    the penalty-sparsified ReLU, gated, JumpReLU) on the rows they reconstruct worst, each kind as
    its `restart_` says, and clear Adam's moments for them. Under DDP the rows are drawn from the
    global batch (gathered in rank order), so every replica restarts alike, and as one process would."""

    def __init__(self, dead: DeadFeatures, every_steps: int, seed: int):
        self.dead, self.every_steps, self.seed = dead, every_steps, seed

    @classmethod
    def build(cls, state: TrainingState) -> Resample | None:
        every, batch = state.trainer.resample_every_n_tokens, state.trainer.batch_size
        return cls(state.dead, max(1, every // batch), state.seed) if every else None

    @staticmethod
    def _global(trainer, rows: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return rows
        return trainer.strategy.all_gather(rows).flatten(0, 1)  # [world, batch/world, d] -> the global batch

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_steps or step >= trainer.max_steps:
            return
        optimizer = trainer.optimizers[0]
        outs = pl_module.step_outputs
        for key, d in pl_module.members.items():
            dead = self.dead.mask(key)
            if not d.resamples or key not in outs or dead is None or not dead.any():
                continue  # (a retired member has no output)
            dead = dead.to(d.W_enc.device)
            input_hook, target_hook = pl_module.reads[key]
            x = self._global(trainer, batch[input_hook])
            residual = self._global(trainer, batch[target_hook] - outs[key].y)
            error = residual.pow(2).sum(-1)
            gen = torch.Generator(device=error.device).manual_seed(self.seed * 1_000_003 + step)
            rows = torch.multinomial(error / error.sum(), int(dead.sum()), replacement=True, generator=gen)
            for param, index in d.restart_(dead, x, residual, rows):
                for moment in optimizer.state.get(param, {}).values():
                    if torch.is_tensor(moment) and moment.shape == param.shape:
                        moment[index] = 0.0
            self.dead.restarted(key, dead)
