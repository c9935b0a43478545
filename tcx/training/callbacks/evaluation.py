"""Held-out evaluation of every member during and at the end of training."""

from __future__ import annotations

import lightning as L
import torch

from tcx.training.callbacks.state import TrainingState
from tcx.training.members import Member


class HeldOutEvaluation(L.Callback):
    """Each member's held-out metrics and spliced fidelity, every N training tokens and at the end."""

    def __init__(self, members: list[Member], windows, tokens: int, every_tokens: int, batch_size: int,
                 cache_dir: str | None = None):
        self.members, self.windows, self.cache_dir = members, windows, cache_dir
        self.n_windows = max(1, -(-tokens // windows.tokens_per_window))
        self.every_steps = max(1, every_tokens // batch_size) if every_tokens else 0

    @classmethod
    def build(cls, state: TrainingState) -> HeldOutEvaluation | None:
        t = state.trainer
        return (cls(state.members, state.windows, t.eval_tokens, t.eval_every_n_tokens, t.batch_size,
                    state.cache_dir) if t.eval_tokens else None)

    def measure(self, trainer, pl_module) -> dict[str, tuple[dict[str, float], torch.Tensor]]:
        """All active members in one pass over the held-out tokens: the clean run, the ablations
        and the means are shared (and kept: the next evaluation reads them from the cache);
        each member's fidelity is that of it spliced in alone."""
        from tcx.evaluation.run import measure
        from tcx.runs import Placed

        active = [m for m in self.members if m.key not in pl_module.retired]
        placed = [Placed(pl_module.members[m.key], m.input_hook, m.target_hook) for m in active]
        for p in placed:
            p.dictionary.eval()  # inference behaviour, e.g. BatchTopK's threshold instead of batch ranking
        try:
            rows, _, freqs = measure(trainer.datamodule.lm, placed, self.windows.heldout[: self.n_windows],
                                     self.windows.valid, progress=False, joint=False, cache_dir=self.cache_dir)
        finally:
            for p in placed:
                p.dictionary.train()
        return {m.key: (row, freq) for m, row, freq in zip(active, rows, freqs, strict=True)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_steps and step % self.every_steps == 0 and step < trainer.max_steps \
                and trainer.is_global_zero:
            rows = self.measure(trainer, pl_module)
            for m in self.members:
                if m.key in rows:
                    m.log({f"eval/{k}": v for k, v in rows[m.key][0].items() if isinstance(v, float)}, step)
