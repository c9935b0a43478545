"""Saving and loading any dictionary kind: `dictionary.safetensors` + `dictionary.json`.

The JSON holds the kind (its config's `_target_`), the config, the sizes, and where it was trained
(model, layer, hookpoints, tokens), so a dictionary file is enough to rebuild and splice it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from tcx.config import build_node
from tcx.dictionaries.base import Dictionary
from tcx.errors import CheckpointError
from tcx.io import atomic_path, write_json

WEIGHTS, META = "dictionary.safetensors", "dictionary.json"


def save_dictionary(dictionary: Dictionary, directory: str | Path, meta: dict[str, Any]) -> None:
    directory = Path(directory)
    cfg = dictionary.cfg
    info = {
        "kind": f"{type(cfg).__module__}.{type(cfg).__qualname__}",
        "config": dataclasses.asdict(cfg),
        "d_in": dictionary.d_in,
        "d_out": dictionary.d_out,
        "d_sae": dictionary.d_sae,
        **meta,
    }
    state = {k: v.detach().cpu().contiguous() for k, v in dictionary.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(directory / META, info)


def load_dictionary(path: str | Path) -> tuple[Dictionary, dict[str, Any]]:
    """Load from a run dir, a member dir, or a `dictionary.safetensors` file."""
    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" else path
    weights, meta_path = directory / WEIGHTS, directory / META
    if not weights.is_file() or not meta_path.is_file():
        raise CheckpointError(f"{directory} holds no trained dictionary ({WEIGHTS} and {META} "
                              "are written when training ends).")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = build_node({"_target_": meta["kind"], **meta["config"]}, "dictionary")
        dictionary = cfg.build(meta["d_in"], meta["d_out"])
        dictionary.load_state_dict(load_file(str(weights)))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the files are damaged
        raise CheckpointError(f"{directory}: cannot load the dictionary ({type(e).__name__}: {e}). "
                              "The files were left as they are.") from None
    return dictionary, meta
