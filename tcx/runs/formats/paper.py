"""The GPT-2 small transcoders published with arXiv 2406.11944 (Dunefsky, Chlenski & Nanda):
`final_sparse_autoencoder_gpt2-small_blocks.{i}.ln2.hook_normalized_24576.pt`, each a torch pickle

    {"cfg": <sae_training.config.LanguageModelSAERunnerConfig>,
     "state_dict": {W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out], b_dec [d_in], b_dec_out [d_out]}}

with forward `relu((x - b_dec) @ W_enc + b_enc) @ W_dec + b_dec_out`. The input bias is folded into
b_enc (`b_enc - b_dec @ W_enc`), giving tcx's ReLU transcoder exactly. The config class comes from
the authors' `sae_training` package, which need not be installed: its objects unpickle as plain
attribute bags.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch

from tcx.dictionaries.io import Units
from tcx.dictionaries.relu import ReLUConfig
from tcx.errors import CheckpointError
from tcx.runs.formats.base import Format, imported, sites, take
from tcx.runs.record import OpenedDictionary

KEYS = ("W_enc", "b_enc", "W_dec", "b_dec", "b_dec_out")


class _Bag:
    """Stands in for any `sae_training` class: keeps whatever state the pickle gives it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "sae_training":
            return type(name, (_Bag,), {})
        return super().find_class(module, name)


_pickle = types.SimpleNamespace(Unpickler=_Unpickler, load=lambda f, **kw: _Unpickler(f, **kw).load(),
                                __name__="tcx_paper_pickle")


def load_paper_pickle(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise CheckpointError(f"{path}: cannot unpickle it ({type(e).__name__}: {e}).") from None
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if not isinstance(state, dict) or any(k not in state for k in KEYS):
        found = (f"a dict with keys {sorted(blob)}" + (f", state_dict keys {sorted(state)}"
                                                       if isinstance(state, dict) else "")
                 if isinstance(blob, dict) else f"a {type(blob).__name__}")
        raise CheckpointError(f"{path} is not one of the paper's transcoders: expected "
                              f"{{'cfg', 'state_dict': {list(KEYS)}}}, found {found}.")
    cfg = blob.get("cfg")
    return (dict(vars(cfg)) if cfg is not None and hasattr(cfg, "__dict__") else {}), state


class Paper(Format):
    name = "paper"
    description = "the paper's GPT-2 transcoder pickles (final_sparse_autoencoder_*.pt)"

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".pt" and "sparse_autoencoder" in path.name

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        cfg, state = load_paper_pickle(path)
        d_in, d_sae = state["W_enc"].shape
        d_out = state["W_dec"].shape[1]
        W_enc = take(state, "W_enc", (d_in, d_sae), path)
        b_dec_in = take(state, "b_dec", (d_in,), path)
        input_hook = cfg.get("hook_point") or _hook_from_name(path)
        target_hook = cfg.get("out_hook_point") or input_hook.replace("ln2.hook_normalized", "hook_mlp_out")
        model = cfg.get("model_name", "gpt2-small")
        config = ReLUConfig(d_sae=int(d_sae), **sites(input_hook, target_hook, None))
        params = {"W_enc": W_enc, "b_enc": take(state, "b_enc", (d_sae,), path) - b_dec_in @ W_enc,
                  "W_dec": take(state, "W_dec", (d_sae, d_out), path),
                  "b_dec": take(state, "b_dec_out", (d_out,), path)}
        return [imported(config.build(int(d_in), int(d_out)), params, source=path, fmt=self.name,
                         input_hook=input_hook, target_hook=target_hook, units=units, model=model,
                         l1_coefficient=cfg.get("l1_coefficient"))]


def _hook_from_name(path: Path) -> str:
    start = path.name.index("blocks.")
    return path.name[start:].rsplit("_", 1)[0]
