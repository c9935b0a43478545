"""AuxK: the TopK family's dead latents learn from what the live ones miss."""

from __future__ import annotations

import lightning as L

from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.state import TrainingState


class AuxK(L.Callback):
    """Tells TopK-family members which latents are dead, for their auxiliary loss."""

    def __init__(self, dead: DeadFeatures):
        self.dead = dead

    @classmethod
    def build(cls, state: TrainingState) -> AuxK | None:
        return cls(state.dead) if state.trainer.auxk else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for key, member in pl_module.members.items():
            mask = self.dead.mask(key)
            if member.supports_auxk and mask is not None:
                member.dead.copy_(mask)
