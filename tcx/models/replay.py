"""The frozen replay: the model recomputed from its weights with every nonlinearity fixed at the
clean run, so that it is linear in what is written into the residual stream.

Nothing is edited through hooks (transformer-lens 4 discards pattern edits on some bridges): the
forward pass below is the residual algebra of `family.py`, fed with the clean run's attention
patterns and norm scales, and `check` refuses to go on unless it reproduces the clean run's hooks.

The inputs ("leaves") are what the frozen model is linear in:

    embed  [pos d]          the embedding write (token + position (+ token type))
    attn   [layer pos d]    zeros added to each attention write: their gradient is the write's
    mlp    [layer pos d]    each MLP's write (features + b_dec + error), minus a skip transcoder's
                            linear path, which stays live
    gain   [layer + 2]      multiplies every bias: [embedding, block 0 .. block L-1, final]

Any hook the replay computes is then `sum over leaves of leaf * d hook / d leaf` exactly, which is
what attribution edges are. `through_attention=False` cuts the attention layers out of the
gradient (their writes become fixed inputs): the *direct* effects the paper's path search uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.errors import ConfigError
from tcx.models.family import Weights


class Leaves(NamedTuple):
    embed: Float[Tensor, "*batch pos d"]
    attn: Float[Tensor, "*batch layer pos d"]
    mlp: Float[Tensor, "*batch layer pos d"]
    gain: Float[Tensor, "*batch bias"]


@dataclass
class Frozen:
    """What the clean run fixes: each layer's attention pattern and each norm's per-position scale."""

    patterns: list[Float[Tensor, "head pos pos"]]
    scales: dict[str, Float[Tensor, "pos 1"]]

    @classmethod
    def from_cache(cls, cache: dict[str, Tensor], n_layers: int, dtype: torch.dtype) -> Frozen:
        patterns = [cache[f"blocks.{i}.attn.hook_pattern"][0].to(dtype) for i in range(n_layers)]
        scales = {name[: -len(".hook_scale")]: t[0].to(dtype) for name, t in cache.items()
                  if name.endswith(".hook_scale")}
        return cls(patterns, scales)

    @classmethod
    def invariant(cls, weights: Weights, norms: list[str]) -> Frozen:
        """One position, every scale 1, attention writing nothing: the input-invariant maps through the
        residual stream (de-embeddings, feature-to-feature weights), each norm's centring and weight kept."""
        one = torch.ones(1, 1, dtype=weights.W_E.dtype)
        return cls([torch.zeros(weights.n_heads, 1, 1, dtype=one.dtype)] * weights.n_layers,
                   {n: one for n in norms})


def norm_names(n_layers: int, family: str) -> list[str]:
    names = [f"blocks.{i}.{ln}" for i in range(n_layers) for ln in ("ln1", "ln2")]
    return names + (["embed_ln"] if family == "post" else ["ln_final"])


class Replay:
    def __init__(self, weights: Weights, frozen: Frozen, skips: dict[int, tuple[str, Tensor]] | None = None):
        self.w, self.frozen = weights, frozen
        self.skips = skips or {}
        """layer -> (input hook, W_skip [d_in d]) of skip transcoders: `x @ W_skip` stays live."""
        self._graphs: dict[tuple, tuple[Leaves, dict[str, Tensor]]] = {}

    def attention_input(self, layer: int) -> str:
        """The hook the attention of `layer` reads its values from."""
        return f"blocks.{layer}.hook_resid_pre" if self.w.family == "post" else f"blocks.{layer}.ln1.hook_out"

    def _norm(self, acts: dict[str, Tensor], name: str, x: Tensor, gain: Tensor, norm) -> Tensor:
        normalized, out = norm(x, self.frozen.scales[name], gain)
        acts[f"{name}.hook_in"], acts[f"{name}.hook_normalized"], acts[f"{name}.hook_out"] = x, normalized, out
        return out

    def _attention(self, layer: int, h: Tensor, gain: Tensor, leaf: Tensor, live: bool) -> Tensor:
        if live:
            return self.w.attention(layer, h, self.frozen.patterns[layer], gain) + leaf
        with torch.no_grad():
            write = self.w.attention(layer, h, self.frozen.patterns[layer], gain)
        return write + leaf

    def _mlp(self, acts: dict[str, Tensor], layer: int, leaf: Tensor) -> Tensor:
        write = leaf
        if layer in self.skips:
            hook, W_skip = self.skips[layer]
            write = write + acts[hook] @ W_skip
        acts[f"blocks.{layer}.hook_mlp_out"] = acts[f"blocks.{layer}.mlp.hook_out"] = write
        return write

    def __call__(self, leaves: Leaves, through_attention: bool = True) -> dict[str, Float[Tensor, "pos d"]]:
        """Every hook the frozen model computes, by transformer-lens name."""
        w, acts, g = self.w, {}, leaves.gain
        x = leaves.embed
        if w.family == "post":
            x = self._norm(acts, "embed_ln", x, g[0], w.embed_ln)
        for i in range(w.n_layers):
            p = f"blocks.{i}."
            acts[p + "hook_resid_pre"] = acts[p + "hook_in"] = x
            if w.family == "post":
                a = self._attention(i, x, g[i + 1], leaves.attn[i], through_attention)
                acts[p + "attn.o.hook_out"] = a
                h = self._norm(acts, p + "ln1", x + a, g[i + 1], w.ln1[i])
                acts[p + "hook_mlp_in"] = acts[p + "mlp.hook_in"] = h
                m = self._mlp(acts, i, leaves.mlp[i])
                x = self._norm(acts, p + "ln2", h + m, g[i + 1], w.ln2[i])
            else:
                h1 = self._norm(acts, p + "ln1", x, g[i + 1], w.ln1[i])
                a = self._attention(i, h1, g[i + 1], leaves.attn[i], through_attention)
                acts[p + "attn.o.hook_out"] = acts[p + "hook_attn_out"] = a
                if w.family == "pre":
                    x = x + a
                    acts[p + "hook_resid_mid"] = x
                h2 = self._norm(acts, p + "ln2", x, g[i + 1], w.ln2[i])
                acts[p + "mlp.hook_in"] = acts[p + "hook_mlp_in"] = h2
                m = self._mlp(acts, i, leaves.mlp[i])
                x = x + m if w.family == "pre" else x + a + m
            acts[p + "hook_resid_post"] = acts[p + "hook_out"] = x
        if w.ln_final is not None:
            self._norm(acts, "ln_final", x, g[-1], w.ln_final)
        return acts

    def check(self, leaves: Leaves, cache: dict[str, Tensor], rtol: float) -> float:
        """Refuse, naming the first hook that disagrees, unless the replay reproduces the clean run.
        Returns the largest relative difference seen."""
        with torch.no_grad():
            acts = self(leaves)
        worst = 0.0
        for name, mine in acts.items():
            if name not in cache:
                continue
            ref = cache[name][0].to(mine.dtype)
            err = float((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            worst = max(worst, err)
            if err > rtol:
                raise ConfigError(
                    f"the frozen replay ({self.w.family}-norm family, {mine.dtype}) does not reproduce the model "
                    f"at '{name}' (relative difference {err:.2e} > replay_rtol={rtol:g}), so nothing was "
                    "attributed. In half precision or a deep float32 model, try replay_dtype=float64 or a "
                    "looser replay_rtol; a larger difference means an architecture the engine does not know.")
        return worst

    def grads(self, leaves: Leaves, cotangents: dict[str, Float[Tensor, "batch pos d"]],
              through_attention: bool = True) -> Leaves:
        """d(sum over hooks of cotangent . hook)/d leaf, one row per batch entry of the cotangents.
        The frozen model is linear, so its gradients do not depend on the leaves' values: the forward
        graph is built once per mode and reused by every batch."""
        key = (through_attention, tuple(leaves.embed.shape), leaves.embed.dtype)
        if key not in self._graphs:
            live = Leaves(*(t.detach().clone().requires_grad_(True) for t in leaves))
            with torch.enable_grad():
                self._graphs[key] = (live, self(live, through_attention))
        live, acts = self._graphs[key]
        got = torch.autograd.grad([acts[h] for h in cotangents], list(live), grad_outputs=list(cotangents.values()),
                                  is_grads_batched=True, allow_unused=True, retain_graph=True)
        batch = next(iter(cotangents.values())).shape[0]
        return Leaves(*(torch.zeros(batch, *leaf.shape, dtype=leaf.dtype) if g is None else g
                        for g, leaf in zip(got, leaves, strict=True)))


def invariant_replay(weights: Weights, skips: dict[int, tuple[str, Tensor]] | None = None) -> tuple[Replay, Leaves]:
    """The input-invariant replay (`Frozen.invariant`: one position, scales 1, attention cut) and
    zero leaves for it: pull a vector back through it for de-embeddings and feature-to-feature maps."""
    d, n, dtype = weights.W_E.shape[1], weights.n_layers, weights.W_E.dtype
    leaves = Leaves(torch.zeros(1, d, dtype=dtype), torch.zeros(n, 1, d, dtype=dtype),
                    torch.zeros(n, 1, d, dtype=dtype), torch.zeros(n + 2, dtype=dtype))
    return Replay(weights, Frozen.invariant(weights, norm_names(n, weights.family)), skips), leaves
