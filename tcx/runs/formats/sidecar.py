"""`tcx.json`, written beside another tool's files by `tcx-export`: what that format cannot say
(tcx's model and corpus configs, the kind and training tokens), so reading the folder back into tcx
loses nothing. Other tools ignore the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcx.io import write_json

SIDECAR = "tcx.json"


def model_name(runs) -> str:
    """The model's name as other tools know it: the hub path where there is one (`gpt2`)."""
    return getattr(runs.spec, "path", None) or runs.spec.name


def write_sidecar(folder: Path, runs, d=None) -> None:
    """`tcx.json` for the dictionary `d` of `runs`, or for the whole of `runs` (a transcoder set)."""
    info = {"model": runs.spec.name, "model_config": runs.model_config, "data_config": runs.data_config,
            "training_tokens": max(int(x.meta.get("training_tokens") or 0) for x in runs.dictionaries)}
    if d is not None:
        info.update(kind=d.meta["kind"], training_tokens=d.meta.get("training_tokens"),
                    input_hook=d.input_hook, target_hook=d.target_hook, **trained_with(d))
    else:  # a transcoder set: each layer's own
        info["layers"] = {str(x.layer): trained_with(x) for x in runs.dictionaries}
    write_json(folder / SIDECAR, info)


def trained_with(d) -> dict[str, Any]:
    """The settings a format has no field for (l1_coeff, expansion_factor, the seed): read back, a
    dictionary says how it was trained, not its kind's defaults."""
    return {"config": d.meta.get("config"), "seed": d.meta.get("seed")}


def read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # only a convenience: the format's own files are what counts
