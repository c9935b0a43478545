"""Learning-rate and sparsity-penalty schedules, pure functions of the step (so resume is exact)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    max_steps: int
    lr_warmup_steps: int
    lr_decay_fraction: float
    sparsity_warmup_fraction: float

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero over the last fraction of steps."""
        warm = min(1.0, (step + 1) / max(1, self.lr_warmup_steps))
        decay_steps = int(self.lr_decay_fraction * self.max_steps)
        if decay_steps == 0:
            return warm
        return warm * min(1.0, (self.max_steps - step) / decay_steps)

    def sparsity_scale(self, step: int) -> float:
        """The sparsity penalty ramps up from 0 so early features are not killed before they form."""
        warm_steps = self.sparsity_warmup_fraction * self.max_steps
        return 1.0 if warm_steps < 1 else min(1.0, (step + 1) / warm_steps)
