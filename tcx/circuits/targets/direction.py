"""A direction in a vector file (`target=direction`: a probe, the only target an encoder such as
MiniLM has), read at one hook at one position or averaged over all of them; its bias is the constant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import Tensor

from tcx.circuits.targets.base import Target, TargetConfig, at, position
from tcx.errors import ConfigError


def load_direction(path: str | Path) -> tuple[Tensor, float]:
    """A probe: a vector in a .pt/.npy/.safetensors file (tensor, or `direction`/`weight` + `bias`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"target.path={path}: no such file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        elif path.suffix == ".npy":
            import numpy as np

            obj = torch.from_numpy(np.load(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ConfigError(f"target.path={path} could not be read as a probe ({e}).") from e
    bias = 0.0
    if isinstance(obj, dict):
        vec = next((obj[k] for k in ("direction", "weight", "w") if k in obj), None)
        if vec is None:
            raise ConfigError(f"{path} holds {sorted(obj)}; a probe file needs 'direction' (or 'weight').")
        bias = float(torch.as_tensor(obj.get("bias", 0.0)).reshape(-1)[0])
    else:
        vec = obj
    vec = torch.as_tensor(vec).reshape(-1)
    return vec, bias


@dataclass(kw_only=True)
class DirectionConfig(TargetConfig):
    path: str = MISSING
    """A .pt/.npy/.safetensors file with the probe's vector (and optional bias)."""
    hook: str | None = None
    """The hook it reads (default: the last block's output)."""

    def resolve(self, rm) -> Target:
        hook = self.hook or f"blocks.{rm.n_layers - 1}.hook_out"
        if hook not in rm.hooks or hook not in rm.cache:  # (the replay also names a pre-norm model's MLP input,
            readable = [h for h in rm.hooks if h in rm.cache]  # which the model itself has no hook for)
            raise ConfigError(f"target.hook='{hook}' is not a hook the frozen replay of "
                              f"{rm.lm.spec.name} computes and the model records; e.g. {readable[-4:]}.")
        vec, bias = load_direction(self.path)
        act = rm.cache[hook][0]
        if vec.numel() != act.shape[-1]:
            raise ConfigError(f"the probe in {self.path} has {vec.numel()} entries but {hook} has width "
                              f"{act.shape[-1]}.")
        vec = vec.to(rm.dtype)
        if str(self.pos) == "mean":
            cot, p, where = vec.expand(rm.n_pos, -1) / rm.n_pos, rm.n_pos - 1, "mean"
        else:
            p = position(rm, self.pos)
            cot, where = at(rm, p, vec), str(p)
        value = float((cot * act).sum()) + bias
        return Target("direction", f"{Path(self.path).stem}·{hook}@{where}", hook, cot.clone(), bias, value, p)
