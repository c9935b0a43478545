"""Model specs: the `conf/model/*.yaml` dataclasses.

A spec names the model, its size, and the hookpoints of each *site* a dictionary can read or write
(`mlp_in`, `mlp_out`, ...). Sites are templates over the layer, so the difference between
architectures (causal: `ln2.hook_normalized`; BERT: `hook_mlp_in`) is data in the YAML, not a
branch in the code. Each kind of model is one module holding its spec subclass and its loader:
`hub.py` (HubModelSpec), `embedded.py` (EmbeddedMiniLMSpec), `gguf.py` (GGUFModelSpec), `native.py`
(NativeModelSpec). This module knows none of them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omegaconf import MISSING

from tcx.digest import json_digest
from tcx.errors import ConfigError

if TYPE_CHECKING:
    from tcx.models.lm import LanguageModel


def layer_of(hook: str) -> int | None:
    """The block index in a transformer-lens hook name (`blocks.8.ln2.hook_normalized` -> 8); None
    for a hook outside the blocks (the embedding, the final norm)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m[1]) if m else None


@dataclass(kw_only=True)
class ModelSpec:
    name: str = MISSING
    n_layers: int = MISSING
    d_model: int = MISSING
    default_layer: int = 0
    kind: str = "causal"
    """causal: next-token CE is its loss; encoder: its pooled sentence embedding is its output."""
    sites: dict[str, str] = field(default_factory=dict)
    """Site name -> hookpoint template with `{layer}`, e.g. mlp_out: blocks.{layer}.hook_mlp_out."""
    ctx_len: int = 128
    """Tokens per context window, special tokens included."""
    prefix_token: str | None = None
    """Tokenizer attribute of the token opening every window (bos_token_id, cls_token_id)."""
    suffix_token: str | None = None
    """Tokenizer attribute of the token closing every window (sep_token_id for BERT)."""
    separator_token: str | None = None
    """Tokenizer attribute of the token placed between documents in the token stream."""
    embedding_hook: str | None = None
    """Encoders: the hook whose mean over positions, L2-normalised, is the model's output."""

    def __post_init__(self) -> None:
        if not self.sites:
            raise ConfigError("sites is empty: name at least mlp_in and mlp_out hookpoints.")
        if self.kind not in ("causal", "encoder"):
            raise ConfigError(f"kind must be 'causal' or 'encoder', got '{self.kind}'.")
        if self.ctx_len < 4:
            raise ConfigError(f"ctx_len must be at least 4, got {self.ctx_len}.")

    def hook(self, site: str, layer: int) -> str:
        if site not in self.sites:
            raise ConfigError(f"site '{site}' is not defined for model {self.name}: model.sites has "
                              f"{sorted(self.sites)}.")
        return self.sites[site].format(layer=layer)

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ConfigError(f"layer={layer} is out of range: model {self.name} has n_layers="
                              f"{self.n_layers} (layers 0..{self.n_layers - 1}).")

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        raise NotImplementedError

    def settings_digest(self) -> str:
        """sha256 of every setting but where files are kept (16 hex digits). The caches of
        activations and evaluation baselines key on it beside the weights' digest: some settings
        change the forward pass and not the weights (a native model's `act_fn`, the windows'
        special tokens, the sites)."""
        return json_digest({k: v for k, v in dataclasses.asdict(self).items() if k not in _WHERE_FILES_ARE})


_WHERE_FILES_ARE = ("cache_dir", "refetch")


_MOVED = {"HubModelSpec": "hub", "EmbeddedMiniLMSpec": "embedded", "GGUFModelSpec": "gguf",
          "NativeModelSpec": "native"}


def moved_target(target: str) -> str:
    """`tcx.models.spec.<Kind>Spec` (a config.yaml from before the split) as its current path."""
    module, _, name = target.rpartition(".")
    return f"tcx.models.{_MOVED[name]}.{name}" if module == __name__ and name in _MOVED else target


def __getattr__(name: str):
    """Run dirs written before the split name `tcx.models.spec.<Kind>Spec` in their config.yaml."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"tcx.models.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
