"""The progress bar, when the run wants one."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

from tcx.training.callbacks.state import TrainingState


def progress_bar(state: TrainingState) -> TQDMProgressBar | None:
    return TQDMProgressBar() if state.trainer.progress_bar else None
