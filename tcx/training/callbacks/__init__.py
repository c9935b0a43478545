"""Everything around the training step, one callback per module.

The run's own machinery is always there (training/run.py `make_callbacks`): `DeadFeatures`,
`Throughput`, `MemberLogs` and `MemberOutputs`, then checkpoints. The others come from the
`conf/callbacks/` group, each built from the run's typed `TrainingState` (state.py). They share
state through it (`DeadFeatures` is read by `AuxK`, `Resample` and both reports), and read each
step's outputs from the module (`pl_module.step_outputs`: member key -> `StepOutput`).
"""

from tcx.training.callbacks.auxk import AuxK
from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.evaluation import HeldOutEvaluation
from tcx.training.callbacks.progress import progress_bar
from tcx.training.callbacks.reports import MemberLogs, MemberOutputs
from tcx.training.callbacks.resample import Resample
from tcx.training.callbacks.state import TrainingState
from tcx.training.callbacks.throughput import Throughput

__all__ = ["AuxK", "DeadFeatures", "HeldOutEvaluation", "MemberLogs", "MemberOutputs", "Resample", "Throughput",
           "TrainingState", "progress_bar"]
