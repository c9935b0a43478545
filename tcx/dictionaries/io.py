"""Saving and loading any dictionary kind: `dictionary.safetensors` + `dictionary.json`.

The JSON holds the kind (its config's `_target_`), the config, the sizes, where it was trained
(model, layer, hookpoints, tokens) and which units its tensors use, so a dictionary file is enough
to rebuild and splice it.

Units: tensors are saved in **model units** (`"units": "model"`): the normalisation scales used in
training are folded into the weights, so `relu(x @ W_enc + b_enc) @ W_dec + b_dec` on raw model
activations is the dictionary, as any other tool reads it. The scales are kept in the JSON
(`normalisation`) to recover the training units (`units="normalised"`), in which the sparsity
coefficients were applied. Files written before this convention (no `units` key) hold normalised
tensors with the scales as buffers; they load the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file

from tcx.config import build_node, target_path
from tcx.dictionaries.base import Dictionary
from tcx.errors import CheckpointError, ConfigError
from tcx.io import save_tensors, write_json

WEIGHTS, META = "dictionary.safetensors", "dictionary.json"
Units = Literal["model", "normalised"]


def describe(dictionary: Dictionary) -> dict[str, Any]:
    """What rebuilds an empty dictionary of this kind and size: kind, config, widths."""
    cfg = dictionary.cfg
    return {"kind": target_path(type(cfg)), "config": dataclasses.asdict(cfg),
            "d_in": dictionary.d_in, "d_out": dictionary.d_out, "d_sae": dictionary.d_sae}


def build(info: dict[str, Any]) -> Dictionary:
    """An empty dictionary from `describe`'s fields."""
    cfg = build_node({"_target_": info["kind"], **info["config"]}, "dictionary")
    return cfg.build(info["d_in"], info["d_out"])


def model_units(dictionary: Dictionary) -> Dictionary:
    """A copy whose parameters act on raw model activations (the scales folded in). Built afresh,
    not deep-copied: a module can carry hooks that cannot be copied (`trainer.profiler=pytorch`'s)."""
    if dictionary.in_model_units:
        return dictionary
    folded = build(describe(dictionary)).to(device=dictionary.W_enc.device, dtype=dictionary.W_enc.dtype)
    folded.load_state_dict(dictionary.state_dict())
    return folded.rescale_()


def save_dictionary(dictionary: Dictionary, directory: str | Path, meta: dict[str, Any]) -> None:
    directory = Path(directory)
    folded = model_units(dictionary)
    info = {**describe(dictionary), **meta, "units": "model",
            "normalisation": {"input_scale": float(dictionary.input_scale),
                              "target_scale": float(dictionary.target_scale)}}
    state = {k: v.detach().cpu().contiguous() for k, v in folded.state_dict().items()}
    save_tensors(state, directory / WEIGHTS)
    write_json(directory / META, info)


def set_units(dictionary: Dictionary, meta: dict[str, Any], units: Units) -> Dictionary:
    if units == "model":
        return dictionary.rescale_()
    if units == "normalised":
        scales = meta.get("normalisation") or {"input_scale": float(dictionary.input_scale),
                                               "target_scale": float(dictionary.target_scale)}
        return dictionary.rescale_(scales["input_scale"], scales["target_scale"])
    raise ConfigError(f"units must be 'model' or 'normalised', got {units!r}.")


def load_dictionary(path: str | Path, units: Units = "model") -> tuple[Dictionary, dict[str, Any]]:
    """Load from a run dir, a member dir, or a `dictionary.safetensors` file, in `units`."""
    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" else path
    weights, meta_path = directory / WEIGHTS, directory / META
    if not weights.is_file() or not meta_path.is_file():
        raise CheckpointError(f"{directory} holds no trained dictionary ({WEIGHTS} and {META} "
                              "are written when training ends).")
    try:
        meta = json.loads(meta_path.read_text())
        dictionary = build(meta)
        dictionary.load_state_dict(load_file(str(weights)))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the files are damaged
        raise CheckpointError(f"{directory}: cannot load the dictionary ({type(e).__name__}: {e}). "
                              "The files were left as they are.") from None
    return set_units(dictionary, meta, units), meta
