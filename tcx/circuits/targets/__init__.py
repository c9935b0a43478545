"""What a circuit explains: a logit, a logit difference, a feature, or a direction (a probe).

A kind is a config dataclass (what `conf/target/<kind>.yaml` names as `_target_`) whose
`resolve(rm)` gives the `Target`: a linear function of one hook of the frozen replay,
`value = sum_pos cotangent[pos] . hook[pos] + constant`, with its value in the clean run.
"""

from tcx.circuits.targets.base import Target, TargetConfig

__all__ = ["Target", "TargetConfig"]
