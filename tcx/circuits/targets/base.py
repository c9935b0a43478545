"""The target every kind resolves to, the config they share, and how a position or token is read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.circuits.nodes import Node
from tcx.errors import ConfigError

if TYPE_CHECKING:
    from tcx.circuits.replacement import ReplacementModel


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


@dataclass(kw_only=True)
class TargetConfig:
    """What every kind of target has: the position it is read at."""

    pos: Any = -1
    """The position (negative from the end); a direction also takes 'mean' (over all positions)."""

    def resolve(self, rm: ReplacementModel) -> Target:
        raise NotImplementedError


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


def position(rm: ReplacementModel, pos: int | str, key: str = "pos") -> int:
    try:
        p = int(pos)
    except (TypeError, ValueError):
        raise ConfigError(f"target.{key}={pos!r} is not a position (an integer; 'mean' only for "
                          "target=direction).") from None
    if not -rm.n_pos <= p < rm.n_pos:
        raise ConfigError(f"target.{key}={pos} is outside the prompt's {rm.n_pos} tokens.")
    return p % rm.n_pos


def at(rm: ReplacementModel, pos: int, vector: Tensor) -> Float[Tensor, "pos d"]:
    """A cotangent that reads `vector` at `pos` alone."""
    cot = torch.zeros(rm.n_pos, vector.shape[-1], dtype=rm.dtype)
    cot[pos] = vector
    return cot
