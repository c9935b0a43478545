"""Real models from the Hugging Face hub (gpt2, pythia, ...) or a local copy of one."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from tcx.errors import ModelLoadError
from tcx.models.bridge import bridge_classes
from tcx.models.lm import LanguageModel
from tcx.models.spec import ModelSpec


def boot(path: str, spec: ModelSpec, device: str, dtype: str, revision: str | None = None
         ) -> LanguageModel:
    TransformerBridge, _ = bridge_classes()
    kwargs = {"revision": revision} if revision else {}
    # A checkpoint may lack weights its architecture has (MiniLM's has no masked-LM head), which
    # transformers initialises at random: seeded here, so that every load is the same model (the
    # caches key on the weights' digest), without touching the caller's random state.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        bridge = TransformerBridge.boot_transformers(path, device=device, dtype=getattr(torch, dtype),
                                                     **kwargs)
    return LanguageModel(bridge, spec, bridge.tokenizer)


def load_hub(spec, device: str, dtype: str) -> LanguageModel:
    try:
        return boot(spec.path, spec, device, dtype, spec.revision)
    except OSError as e:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "connect" in str(e).lower()
        why = ("the Hugging Face hub cannot be reached (no network, or HF_HUB_OFFLINE=1) and the "
               "model is not in the local cache" if offline else str(e).splitlines()[0])
        raise ModelLoadError(
            f"model={spec.name}: could not load '{spec.path}': {why}. Download it once on a machine "
            "with a network (it is then cached), set model.path to a local copy, or use the "
            "embedded default that needs no network: model=minilm."
        ) from None


@dataclass(kw_only=True)
class HubModelSpec(ModelSpec):
    """A Hugging Face model loaded through `TransformerBridge.boot_transformers` (needs a network
    the first time, or a local path)."""

    path: str = MISSING
    revision: str | None = None

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        return load_hub(self, device, dtype)
