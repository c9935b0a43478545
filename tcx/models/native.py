"""Tiny seeded models built from a config (`TransformerBridge.boot_native`), with a byte tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tcx.models.bridge import bridge_classes
from tcx.models.lm import LanguageModel
from tcx.models.spec import ModelSpec


class ByteTokenizer:
    """UTF-8 bytes as token ids; 256 opens a window (bos) and separates documents (eos)."""

    bos_token_id = 256
    eos_token_id = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int]) -> str:
        return "".join("<bos>" if i == self.bos_token_id else bytes([i]).decode("utf-8", "replace")
                       if i < 256 else f"<{i}>" for i in ids)


def load_native(spec: NativeModelSpec, device: str, dtype: str) -> LanguageModel:
    TransformerBridge, TransformerBridgeConfig = bridge_classes()
    cfg = TransformerBridgeConfig(
        n_layers=spec.n_layers, d_model=spec.d_model, d_head=spec.d_head, n_heads=spec.n_heads,
        d_mlp=spec.d_mlp, n_ctx=spec.ctx_len, d_vocab=spec.d_vocab, act_fn=spec.act_fn,
        seed=spec.seed,
    )
    bridge = TransformerBridge.boot_native(cfg, device=device, dtype=getattr(torch, dtype))
    return LanguageModel(bridge, spec, ByteTokenizer())


@dataclass(kw_only=True)
class NativeModelSpec(ModelSpec):
    """A randomly initialised model built from its config alone (`boot_native`), seeded: for tests
    and quick checks. Text is tokenised as UTF-8 bytes."""

    d_head: int = 16
    n_heads: int = 4
    d_mlp: int = 256
    d_vocab: int = 260
    act_fn: str = "relu"
    seed: int = 0

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        return load_native(self, device, dtype)
