"""A transcoder feature's pre-activation at one position (`target=feature`): read from its input
hook through its encoder column, `b_enc` being the constant."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from tcx.circuits.targets.base import Target, TargetConfig, at, position
from tcx.errors import ConfigError


@dataclass(kw_only=True)
class FeatureConfig(TargetConfig):
    layer: int = MISSING
    index: int = MISSING

    def resolve(self, rm) -> Target:
        layer, index = self.layer, self.index
        if layer not in rm.codes:
            raise ConfigError(f"target.layer={layer} has no transcoder (transcoders cover layers "
                              f"{sorted(rm.codes)}).")
        c = rm.codes[layer]
        if not 0 <= index < c.z.shape[1]:
            raise ConfigError(f"target.index={index} is out of range: layer {layer}'s transcoder has "
                              f"{c.z.shape[1]} features.")
        p = position(rm, self.pos)
        if c.z[p, index] == 0:
            top = c.z[p].topk(min(5, c.z.shape[1]))
            active = [int(i) for v, i in zip(top.values, top.indices, strict=True) if v > 0]
            raise ConfigError(f"feature {index} of layer {layer} does not fire at position {p} of this prompt: "
                              f"an inactive feature has no circuit. The most active there: {active}.")
        pre = float(c.x[p] @ c.W_enc[:, index] + c.b_enc[index])
        return Target("feature", f"L{layer}/{index}@{p}", c.source.input_hook, at(rm, p, c.W_enc[:, index]),
                      float(c.b_enc[index]), pre, p)
