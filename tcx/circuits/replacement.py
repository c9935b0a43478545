"""The replacement model of one prompt: transcoders placed at their MLPs, the clean run, each
feature's activation, each MLP's error, and the frozen replay checked against the clean run.

    rm = ReplacementModel.build(lm, transcoders, tokens)
    rm.codes[3].z          # [pos d_sae] activations of layer 3's transcoder on the prompt
    rm.leaves              # the clean run's inputs to the frozen replay
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tcx.dictionaries.base import Dictionary
from tcx.errors import ConfigError
from tcx.models.family import Weights
from tcx.models.replay import Frozen, Leaves, Replay
from tcx.runs.record import OpenedDictionary

SUPPORTED = ("relu", "topk", "jumprelu")
"""Activations under which a firing feature's activation is its pre-activation (`z = x W_enc + b_enc`)."""


@dataclass
class LayerCodes:
    """One transcoder on the prompt."""

    layer: int
    source: OpenedDictionary
    dictionary: Dictionary
    """A copy of the source's, in the replay's dtype and model units, with no gradients."""
    x: Float[Tensor, "pos d_in"]
    """Its clean input (at `source.input_hook`)."""
    z: Float[Tensor, "pos d_sae"]
    error: Float[Tensor, "pos d"]
    """The MLP's clean output minus the transcoder's."""

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        return self.dictionary.W_enc

    @property
    def W_dec(self) -> Float[Tensor, "d_sae d"]:
        return self.dictionary.W_dec

    @property
    def b_enc(self) -> Float[Tensor, " d_sae"]:
        return self.dictionary.b_enc

    @property
    def b_dec(self) -> Float[Tensor, " d"]:
        return self.dictionary.b_dec


def _place(transcoders: list[OpenedDictionary], n_layers: int) -> dict[int, OpenedDictionary]:
    by_layer: dict[int, OpenedDictionary] = {}
    for t in transcoders:
        layer = t.layer
        if not t.is_transcoder:
            raise ConfigError(f"{t.source} is an SAE (it reads and writes {t.input_hook}): circuits need "
                              "transcoders, which replace an MLP (transcoders=<runs of dictionary=transcoder>).")
        if layer is None or t.target_hook not in (f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_out"):
            raise ConfigError(f"{t.source} writes {t.target_hook}, which is not an MLP's output: a circuit "
                              "transcoder must reconstruct blocks.<layer>.hook_mlp_out.")
        if not 0 <= layer < n_layers:
            raise ConfigError(f"{t.source} is for layer {layer}, but the model has {n_layers} layers.")
        if layer in by_layer:
            raise ConfigError(f"two transcoders for layer {layer}: {by_layer[layer].source} and {t.source}; "
                              "give one per layer in transcoders=.")
        activation = t.dictionary.activation().name
        if activation not in SUPPORTED:
            raise ConfigError(f"{t.source} is a {activation} dictionary: its activation is not its "
                              f"pre-activation where it fires, so edges into it are undefined. Circuits "
                              f"take {', '.join(SUPPORTED)} kinds (transcoder, topk, batchtopk, jumprelu, "
                              "skip_transcoder).")
        by_layer[layer] = t
    return by_layer


@dataclass
class ReplacementModel:
    lm: Any
    tokens: Int[Tensor, " pos"]
    weights: Weights
    replay: Replay
    leaves: Leaves
    codes: dict[int, LayerCodes]
    cache: dict[str, Tensor]
    replay_error: float
    hooks: list[str]
    """Every hook the frozen replay computes (what targets and transcoders may read)."""

    @property
    def n_layers(self) -> int:
        return self.weights.n_layers

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.W_E.dtype

    def token_text(self, token: int) -> str:
        decode = getattr(self.lm.tokenizer, "decode", None)
        return decode([int(token)]) if decode else str(int(token))

    def token_strings(self) -> list[str]:
        return [self.token_text(t) for t in self.tokens]

    @classmethod
    def build(cls, lm: Any, transcoders: list[OpenedDictionary], tokens: Int[Tensor, " pos"],
              dtype: torch.dtype | None = None, rtol: float = 1e-4) -> ReplacementModel:
        """`dtype`: the replay's (default: the model's own)."""
        bridge = lm.bridge
        dtype = dtype or next(bridge.parameters()).dtype
        n_ctx = int(getattr(bridge.cfg, "n_ctx", 0) or 0)
        if n_ctx and len(tokens) > n_ctx:
            raise ConfigError(f"the prompt is {len(tokens)} tokens but {lm.spec.name} reads at most {n_ctx}: "
                              "shorten prompt=.")
        placed = _place(transcoders, int(bridge.cfg.n_layers))
        weights = Weights.of(bridge, dtype)
        wanted = {h for d in placed.values() for h in (d.input_hook, d.target_hook)}
        with torch.no_grad():  # not inference_mode: the replay differentiates through these tensors
            _, cache = bridge.run_with_cache(tokens[None].to(lm.device))
        cache = {k: v.detach().to("cpu", dtype) for k, v in cache.items()}
        missing = sorted(h for h in wanted if h not in cache)
        if missing:
            raise ConfigError(f"hookpoints {missing} recorded by the transcoders do not exist in {lm.spec.name}.")
        codes: dict[int, LayerCodes] = {}
        skips: dict[int, tuple[str, Tensor]] = {}
        mlp = torch.stack([cache[f"blocks.{i}.hook_mlp_out"][0] for i in range(weights.n_layers)])
        for layer, t in sorted(placed.items()):
            d = copy.deepcopy(t.dictionary).to(dtype).eval().requires_grad_(False)  # the caller's stays as is
            if not d.in_model_units:
                d.rescale_()
            x = cache[t.input_hook][0]
            if x.shape[-1] != d.d_in:
                raise ConfigError(f"{t.source} expects width {d.d_in} at {t.input_hook}, but the model has "
                                  f"{x.shape[-1]} there: it was trained on another model.")
            with torch.no_grad():
                z, y = d.encode_decode(x)
            codes[layer] = LayerCodes(layer, t, d, x, z, mlp[layer] - y)
            W_skip = getattr(d, "W_skip", None)
            if W_skip is not None:
                skips[layer] = (t.input_hook, W_skip.detach())
                mlp[layer] = mlp[layer] - x @ W_skip.detach()
        embed = cache["embed_ln.hook_in" if weights.family == "post" else "blocks.0.hook_resid_pre"][0]
        leaves = Leaves(embed, torch.zeros_like(mlp), mlp, torch.ones(weights.n_layers + 2, dtype=dtype))
        replay = Replay(weights, Frozen.from_cache(cache, weights.n_layers, dtype), skips)
        with torch.no_grad():
            hooks = list(replay(leaves))
        unknown = sorted({d.input_hook for d in placed.values()} - set(hooks))
        if unknown:
            raise ConfigError(f"the transcoders read {unknown}, which the frozen replay of the {weights.family}-"
                              f"norm family does not compute; it computes e.g. {hooks[:8]}.")
        worst = replay.check(leaves, cache, rtol)
        return cls(lm, tokens, weights, replay, leaves, codes, cache, worst, hooks)
