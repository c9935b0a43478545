"""What a dictionary format does: recognise a folder, read it into tcx dictionaries, write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from tcx.dictionaries.base import Activation, Dictionary
from tcx.dictionaries.io import Units, describe, set_units
from tcx.errors import CheckpointError, ConfigError
from tcx.models.spec import layer_of
from tcx.runs.record import OpenedDictionary, site_of

if TYPE_CHECKING:
    from tcx.runs.open import OpenedRuns


class Format:
    """One file format. Readers return dictionaries in model units; writers get them so."""

    name = ""
    description = ""
    """One line for error messages: what the format's folder holds."""

    def detect(self, path: Path) -> bool:
        raise NotImplementedError

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        raise NotImplementedError

    @property
    def writable(self) -> bool:
        return type(self).write is not Format.write

    def write(self, runs: OpenedRuns, out: Path) -> None:
        """Write the dictionaries of `runs` into the (empty, temporary) folder `out`."""
        raise ConfigError(f"format={self.name} is read-only in tcx.")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e}).") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise CheckpointError(f"{path}: cannot read the tensors ({type(e).__name__}: {e}).") from None


def take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], path: Path) -> torch.Tensor:
    """Tensor `name` of `path`, checked against the shape the format's config implies."""
    if name not in tensors:
        raise CheckpointError(f"{path}: tensor '{name}' is missing (found {sorted(tensors)}).")
    t = tensors[name]
    if tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor '{name}' has shape {list(t.shape)}, expected {list(shape)}.")
    return t.float()


def imported(dictionary: Dictionary, params: dict[str, torch.Tensor], *, source: Path, fmt: str,
             input_hook: str, target_hook: str, units: Units, model: str | None = None,
             side: dict[str, Any] | None = None, **meta: Any) -> OpenedDictionary:
    """Wrap a dictionary built from another tool's tensors (already in model units). `side` is the
    folder's `tcx.json` when tcx exported it: tcx's model and corpus, which override `model`."""
    side = side or {}
    with torch.no_grad():
        for name, value in params.items():
            getattr(dictionary, name).copy_(value)
    info = {**describe(dictionary), "model": side.get("model") or model, "layer": layer_of(input_hook),
            "input_hook": input_hook, "target_hook": target_hook, "units": "model", "imported_from": fmt,
            "training_tokens": side.get("training_tokens"), **meta}
    trained = side.get("layers", {}).get(str(info["layer"])) or side  # a transcoder set's: per layer
    if trained.get("config"):  # how it was trained, where the kind read back has the field
        info["config"] = {**info["config"], **{k: v for k, v in trained["config"].items() if k in info["config"]}}
    if trained.get("seed") is not None:
        info["seed"] = trained["seed"]
    return OpenedDictionary(set_units(dictionary, info, units), info, source, fmt, side.get("model_config"),
                            side.get("data_config"))


def sites(input_hook: str, target_hook: str, model_config: dict[str, Any] | None) -> dict[str, str]:
    """`input_site`/`target_site` config fields for a dictionary read from hook names."""
    layer = layer_of(input_hook)
    return {"input_site": site_of(input_hook, model_config, layer),
            "target_site": site_of(target_hook, model_config, layer)}


def rebuild(activation: Activation, d_in: int, d_out: int, d_sae: int, site_fields: dict[str, str],
            skip: bool, source: Path) -> Dictionary:
    """The tcx kind that computes `activation` (with a linear skip if `skip`), empty."""
    from tcx.dictionaries.gated import GatedConfig
    from tcx.dictionaries.jumprelu import JumpReLUConfig
    from tcx.dictionaries.relu import ReLUConfig
    from tcx.dictionaries.skip import SkipTranscoderConfig
    from tcx.dictionaries.topk import TopKConfig

    kinds = {"relu": ReLUConfig, "topk": SkipTranscoderConfig if skip else TopKConfig,
             "jumprelu": JumpReLUConfig, "gated": GatedConfig}
    if skip and activation.name != "topk":
        raise CheckpointError(f"{source}: a {activation.name} dictionary with a skip connection has no tcx "
                              "kind (tcx's skip_transcoder is TopK).")
    extra = {"k": activation.k} if activation.name == "topk" else {}
    return kinds[activation.name](d_sae=d_sae, **extra, **site_fields).build(d_in, d_out)


def jumprelu_params(activation: Activation) -> dict[str, torch.Tensor]:
    """tcx's JumpReLU stores log θ; other tools store θ."""
    return {"log_threshold": activation.threshold.log()} if activation.name == "jumprelu" else {}


def unsupported(fmt: str, d: OpenedDictionary, why: str, others: str) -> ConfigError:
    return ConfigError(f"format={fmt} cannot express {d.source} ({d.meta['kind'].rsplit('.', 1)[-1]}"
                       f"{' transcoder' if d.is_transcoder else ' SAE'}): {why}. Formats that can: {others}.")
