"""What the callbacks of one run share, typed."""

from __future__ import annotations

from dataclasses import dataclass

from tcx.config import TrainerConfig
from tcx.data.windows import TokenWindows
from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.members import Member


@dataclass
class TrainingState:
    """Built once per run by `make_callbacks` (training/run.py) and handed, as `state=`, to every
    `conf/callbacks/` entry marked `_partial_: true`. Each step's outputs are not here: callbacks
    read them from the module, `pl_module.step_outputs` (member key -> `StepOutput`)."""

    trainer: TrainerConfig
    """The run's trainer settings: each callback reads its own (`auxk`, `eval_tokens`, ...)."""
    members: list[Member]
    """Each with the hookpoints it reads (`input_hook`, `target_hook`): the keys of a batch."""
    windows: TokenWindows
    seed: int
    dead: DeadFeatures
    """Tokens since each feature last fired, per member: AuxK, Resample and the reports read it."""
    cache_dir: str | None = None
    """Where runs keep what they share: tokenised corpora, activations, evaluation baselines."""
