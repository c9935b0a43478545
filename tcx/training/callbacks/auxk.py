"""AuxK: the TopK family's dead latents learn from what the live ones miss."""

from __future__ import annotations

import lightning as L

from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.state import TrainingState


class AuxK(L.Callback):
    """Tells TopK-family members which latents are dead (silent for `window_tokens`), for their
    auxiliary loss."""

    def __init__(self, dead: DeadFeatures, window_tokens: int):
        self.dead, self.window_tokens = dead, window_tokens

    @classmethod
    def build(cls, state: TrainingState) -> AuxK | None:
        return cls(state.dead, state.trainer.auxk_window_tokens) if state.trainer.auxk else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for key, member in pl_module.members.items():
            mask = self.dead.mask(key, self.window_tokens)
            if member.supports_auxk and mask is not None:
                member.dead.copy_(mask)
