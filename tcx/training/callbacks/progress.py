"""The progress bar, when the run wants one."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

from tcx.training.callbacks.state import TrainingState


class ProgressBar(TQDMProgressBar):
    """Lightning's bar, with tokens per second as a whole number (`12,345`): tqdm prints a logged
    float in its shortest form: a round 10,000.0 came out as `1e+4`, and a GPU's 104,524.4 as `1.05e+5`."""

    def get_metrics(self, trainer, pl_module) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        if "tok/s" in items:
            items["tok/s"] = f"{float(items['tok/s']):,.0f}"
        return items


def progress_bar(state: TrainingState) -> TQDMProgressBar | None:
    return ProgressBar() if state.trainer.progress_bar else None
