"""What a circuit explains: a logit, a logit difference, a feature, or a direction (a probe).

Each resolves to a linear function of one hook of the frozen replay,
`value = sum_pos cotangent[pos] . hook[pos] + constant`, and carries its value in the clean run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.circuits.nodes import Node
from tcx.circuits.replacement import ReplacementModel
from tcx.errors import ConfigError


@dataclass
class Target:
    kind: str
    label: str
    hook: str
    cotangent: Float[Tensor, "pos d"]
    constant: float
    """The part no source explains (b_U, b_enc, a probe's bias): edges sum to value - constant."""
    value: float
    """In the clean run, computed from the model's own hooks."""
    pos: int
    """The position the graph draws it at."""
    token_prob: float = 0.0
    token: int | None = None
    """A logit target's token id."""

    @property
    def node(self) -> Node:
        return Node("logit", None, self.pos, self.token) if self.kind == "logit" else Node("target", None, self.pos)


def one_token(rm: ReplacementModel, token: str | int, key: str) -> int:
    """`token` as text that must be exactly one token ("5" for Hydra's 5 too), or `#<id>`."""
    token = str(token)
    if token.startswith("#") and token[1:].isdigit():
        return int(token[1:])
    ids = rm.lm.encode(token)
    if len(ids) != 1:
        pieces = [rm.token_text(i) for i in ids]
        raise ConfigError(f"target.{key}='{token}' is {len(ids)} tokens ({pieces}), not one: give "
                          "a string that is a single token (mind the leading space), or '#<id>'.")
    return ids[0]


def _position(rm: ReplacementModel, pos: int | str, key: str = "pos") -> int:
    try:
        p = int(pos)
    except (TypeError, ValueError):
        raise ConfigError(f"target.{key}={pos!r} is not a position (an integer; 'mean' only for "
                          "target.kind=direction).") from None
    if not -rm.n_pos <= p < rm.n_pos:
        raise ConfigError(f"target.{key}={pos} is outside the prompt's {rm.n_pos} tokens.")
    return p % rm.n_pos


def _at(rm: ReplacementModel, pos: int, vector: Tensor) -> Tensor:
    cot = torch.zeros(rm.n_pos, vector.shape[-1], dtype=rm.dtype)
    cot[pos] = vector
    return cot


def logit_target(rm: ReplacementModel, token: str | int | None, other: str | int | None = None,
                 pos: int | str = -1) -> Target:
    """`token=None`: the model's own top prediction at `pos`."""
    w = rm.weights
    if w.W_U is None:
        raise ConfigError(f"{rm.lm.spec.name} has no language-model head: use target.kind=direction "
                          "(a probe) or feature.")
    p = _position(rm, pos)
    bias = w.b_U if w.b_U is not None else torch.zeros(w.W_U.shape[1], dtype=rm.dtype)
    logits = rm.cache["ln_final.hook_out"][0, p] @ w.W_U + bias
    a = int(logits.argmax()) if token is None else one_token(rm, token, "token")
    b = None if other is None else one_token(rm, other, "other")
    u = w.W_U[:, a] - (w.W_U[:, b] if b is not None else 0)
    constant = float(bias[a] - (bias[b] if b is not None else 0))
    probs = logits.softmax(-1)
    label = f"logit({rm.token_text(a)!r})" + ("" if b is None else f" - logit({rm.token_text(b)!r})")
    value = float(logits[a] - (logits[b] if b is not None else 0))
    return Target("logit" if b is None else "logit_diff", label, "ln_final.hook_out", _at(rm, p, u),
                  constant, value, p, float(probs[a]), a)


def feature_target(rm: ReplacementModel, layer: int, index: int, pos: int | str) -> Target:
    if layer not in rm.codes:
        raise ConfigError(f"target.layer={layer} has no transcoder (transcoders cover layers "
                          f"{sorted(rm.codes)}).")
    c = rm.codes[layer]
    if not 0 <= index < c.z.shape[1]:
        raise ConfigError(f"target.index={index} is out of range: layer {layer}'s transcoder has "
                          f"{c.z.shape[1]} features.")
    p = _position(rm, pos)
    if c.z[p, index] == 0:
        top = c.z[p].topk(min(5, c.z.shape[1]))
        active = [int(i) for v, i in zip(top.values, top.indices, strict=True) if v > 0]
        raise ConfigError(f"feature {index} of layer {layer} does not fire at position {p} of this prompt: "
                          f"an inactive feature has no circuit. The most active there: {active}.")
    pre = float(c.x[p] @ c.W_enc[:, index] + c.b_enc[index])
    return Target("feature", f"L{layer}/{index}@{p}", c.source.input_hook, _at(rm, p, c.W_enc[:, index]),
                  float(c.b_enc[index]), pre, p)


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


def direction_target(rm: ReplacementModel, path: str | Path, hook: str | None, pos: int | str) -> Target:
    hook = hook or f"blocks.{rm.n_layers - 1}.hook_out"
    if hook not in rm.hooks or hook not in rm.cache:  # (the replay also names a pre-norm model's MLP input,
        readable = [h for h in rm.hooks if h in rm.cache]  # which the model itself has no hook for)
        raise ConfigError(f"target.hook='{hook}' is not a hook the frozen replay of "
                          f"{rm.lm.spec.name} computes and the model records; e.g. {readable[-4:]}.")
    vec, bias = load_direction(path)
    act = rm.cache[hook][0]
    if vec.numel() != act.shape[-1]:
        raise ConfigError(f"the probe in {path} has {vec.numel()} entries but {hook} has width {act.shape[-1]}.")
    vec = vec.to(rm.dtype)
    if str(pos) == "mean":
        cot, p, where = vec.expand(rm.n_pos, -1) / rm.n_pos, rm.n_pos - 1, "mean"
    else:
        p = _position(rm, pos)
        cot, where = _at(rm, p, vec), str(p)
    value = float((cot * act).sum()) + bias
    return Target("direction", f"{Path(path).stem}·{hook}@{where}", hook, cot.clone(), bias, value, p)
