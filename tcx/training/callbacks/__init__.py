"""Everything around the training step, one callback per module.

They share state through the objects `make_callbacks` (training/run.py) hands each at construction:
`DeadFeatures` is read by `AuxK`, `Resample` and both reports; `Throughput`, `HeldOutEvaluation`
and `MemberLogs`' metrics window by `MemberOutputs`. Each step's outputs reach them as
`outputs["outs"]`: member key -> `StepOutput` (tcx/dictionaries/base.py).
"""

from tcx.training.callbacks.auxk import AuxK
from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.evaluation import HeldOutEvaluation
from tcx.training.callbacks.reports import MemberLogs, MemberOutputs
from tcx.training.callbacks.resample import Resample
from tcx.training.callbacks.throughput import Throughput

__all__ = ["AuxK", "DeadFeatures", "HeldOutEvaluation", "MemberLogs", "MemberOutputs", "Resample", "Throughput"]
