"""The residual algebra of each architecture family, written once from the model's weights.

With attention patterns and norm scales frozen at their clean-run values and every MLP's output
a fixed input, a transformer is linear in what is written into its residual stream. Three families
cover the models tcx knows:

    pre       (GPT-2, Llama)  x += attn(ln1(x));  x += mlp(ln2(x));          out = ln_final(x)
    parallel  (Pythia)        x += attn(ln1(x)) + mlp(ln2(x))                out = ln_final(x)
    post      (BERT, MiniLM)  x = ln1(x + attn(x));  x = ln2(x + mlp(x))     (no final norm)

`Weights` holds the tensors the frozen model needs, read through TransformerBridge's uniform
accessors (`W_V`, `W_O`, ...), so the same code serves transformer-lens 3.9 and 4.x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

Family = Literal["pre", "parallel", "post"]


def family_of(bridge: Any) -> Family:
    if "embed_ln.hook_in" in bridge.hook_dict:  # BERT's LayerNorm on the embeddings: post-LN
        return "post"
    return "parallel" if getattr(bridge.cfg, "parallel_attn_mlp", False) else "pre"


def _optional(bridge: Any, name: str) -> Tensor | None:
    try:
        return getattr(bridge, name)
    except (AttributeError, TypeError):  # bias-free projections (Llama): 4.x raises AttributeError, 3.9 TypeError
        return None


@dataclass
class Norm:
    """A LayerNorm (`centred`) or RMSNorm with its frozen per-position scale taken from the clean run:
    `normalized = (x - mean x) / scale` (or `x / scale`), `out = normalized * w + b`."""

    w: Float[Tensor, " d"]
    b: Float[Tensor, " d"] | None
    centred: bool

    @classmethod
    def of(cls, module: Any, dtype: torch.dtype) -> Norm:
        bias = getattr(module, "bias", None)
        return cls(module.weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype),
                   centred=bias is not None)

    def __call__(self, x: Float[Tensor, "pos d"], scale: Float[Tensor, "pos 1"], gain: Tensor
                 ) -> tuple[Tensor, Tensor]:
        normalized = ((x - x.mean(-1, keepdim=True)) if self.centred else x) / scale
        out = normalized * self.w
        return normalized, out if self.b is None else out + gain * self.b


@dataclass
class Weights:
    family: Family
    n_layers: int
    n_heads: int
    W_E: Float[Tensor, "vocab d"]
    W_V: Float[Tensor, "layer kv_head d d_head"]
    b_V: Float[Tensor, "layer kv_head d_head"] | None
    W_O: Float[Tensor, "layer head d_head d"]
    b_O: Float[Tensor, "layer d"] | None
    ln1: list[Norm]
    ln2: list[Norm]
    ln_final: Norm | None
    embed_ln: Norm | None
    W_U: Float[Tensor, "d vocab"] | None
    b_U: Float[Tensor, " vocab"] | None

    @classmethod
    def of(cls, bridge: Any, dtype: torch.dtype = torch.float64) -> Weights:
        family = family_of(bridge)
        n_layers = int(bridge.cfg.n_layers)

        def get(name: str) -> Tensor | None:
            t = _optional(bridge, name)
            return None if t is None else t.detach().to(dtype)

        return cls(
            family=family, n_layers=n_layers, n_heads=int(bridge.W_O.shape[1]),
            W_E=get("W_E"), W_V=get("W_V"), b_V=get("b_V"), W_O=get("W_O"), b_O=get("b_O"),
            ln1=[Norm.of(bridge.blocks[i].ln1, dtype) for i in range(n_layers)],
            ln2=[Norm.of(bridge.blocks[i].ln2, dtype) for i in range(n_layers)],
            # BERT's ln_final belongs to the masked-LM head, not to the residual stream
            ln_final=None if family == "post" else Norm.of(bridge.ln_final, dtype),
            embed_ln=Norm.of(bridge.embed_ln, dtype) if family == "post" else None,
            W_U=None if family == "post" else get("W_U"),
            b_U=None if family == "post" else get("b_U"),
        )

    def values(self, layer: int, h: Float[Tensor, "pos d"], gain: Tensor) -> Float[Tensor, "head pos d_head"]:
        """Each query head's values at every position (key-value heads shared as in GQA)."""
        v = torch.einsum("sd,kde->kse", h, self.W_V[layer])
        if self.b_V is not None:
            v = v + gain * self.b_V[layer][:, None, :]
        return v.repeat_interleave(self.n_heads // v.shape[0], dim=0)

    def attention(self, layer: int, h: Float[Tensor, "pos d"], pattern: Float[Tensor, "head pos pos"],
                  gain: Tensor) -> Float[Tensor, "pos d"]:
        """The attention write with the clean run's pattern: `sum_h A_h (h W_V,h + b_V,h) W_O,h + b_O`."""
        z = torch.einsum("hts,hse->hte", pattern, self.values(layer, h, gain))
        out = torch.einsum("hte,hed->td", z, self.W_O[layer])
        return out if self.b_O is None else out + gain * self.b_O[layer]

    def value_bias(self, layer: int) -> Float[Tensor, " d"]:
        """What the attention biases write at every position (the pattern sums to 1 over sources)."""
        out = torch.zeros(self.W_O.shape[-1], dtype=self.W_O.dtype)
        if self.b_V is not None:
            b_v = self.b_V[layer].repeat_interleave(self.n_heads // self.b_V.shape[1], dim=0)
            out = out + torch.einsum("he,hed->d", b_v, self.W_O[layer])
        return out if self.b_O is None else out + self.b_O[layer]
