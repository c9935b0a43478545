"""`open_runs(paths)`: run dirs, sweep dirs, globs or exported folders -> dictionaries placed in one
model, the model (loaded on first use), and the held-out windows of their corpus."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from omegaconf import OmegaConf
from torch import Tensor

from tcx.config import CONF_DIR, build_node, compose_train, node_of
from tcx.data.windows import load_windows
from tcx.dictionaries.io import Units
from tcx.errors import CheckpointError, ConfigError
from tcx.models.spec import ModelSpec
from tcx.run_dir import MACHINERY, is_set_aside
from tcx.runs.formats import FORMATS, Format, known_formats
from tcx.runs.record import OpenedDictionary, Placed


def _claimed(path: Path) -> Format | None:
    return next((f for f in FORMATS if f.detect(path)), None)


def find_sources(paths: list[str | Path]) -> list[tuple[Path, Format]]:
    """Every folder (or file) in a known format under the given paths or globs, searched
    recursively (a sweep dir holds many runs); a folder in a format is not searched further."""
    found: dict[Path, Format] = {}
    for pattern in map(str, paths):
        matches = sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
        for path in matches:
            if not path.exists():
                raise ConfigError(f"{pattern}: no such run dir, sweep dir or file.")
            if path.suffix == ".safetensors" and path.name == "dictionary.safetensors":
                path = path.parent
            before = len(found)
            _walk(path, found)
            if len(found) == before and (path / "config.yaml").is_file():
                raise CheckpointError(f"{path} holds no trained dictionary (dictionary.safetensors and "
                                      "dictionary.json are written when training ends).")
            if len(found) == before:
                raise ConfigError(f"{path}: no dictionary in a format tcx reads. tcx reads "
                                  f"{known_formats()}.")
    return sorted(found.items(), key=lambda item: str(item[0]))


def _walk(path: Path, found: dict[Path, Format]) -> None:
    fmt = _claimed(path)
    if fmt is not None:
        found[path] = fmt
        return
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if not is_set_aside(child) and child.name not in MACHINERY:
                _walk(child, found)


def model_config_named(name: str) -> dict[str, Any]:
    """The conf/model/ node whose `name` or hub `path` is `name` (SAELens says `gpt2`, tcx `gpt2-small`),
    as a run composes it (its schema's defaults included)."""
    options = sorted(Path(CONF_DIR, "model").glob("*.yaml"))
    for option in options:
        node = OmegaConf.load(option)
        if name in (node.get("name"), node.get("path"), option.stem):
            return OmegaConf.to_container(compose_train([f"model={option.stem}"]).model, resolve=True)
    raise ConfigError(f"model '{name}' is not one tcx knows (conf/model/ has "
                      f"{[o.stem for o in options]}); name one with model=<option>.")


@dataclass
class OpenedRuns:
    dictionaries: list[OpenedDictionary]
    model_config: dict[str, Any]
    data_config: dict[str, Any]
    cache_dir: str
    model_dtype: str = "float32"

    @cached_property
    def spec(self):
        return build_node(self.model_config, "model")

    @cached_property
    def corpus(self):
        return build_node(self.data_config, "data")

    @cached_property
    def lm(self):
        return self.spec.load("cpu", self.model_dtype)

    def placed(self) -> list[Placed]:
        return [d.placed for d in self.dictionaries]

    def heldout(self, max_tokens: int) -> tuple[Int[Tensor, "window ctx"], slice]:
        """Windows the runs never trained on (at least `max_tokens` tokens when the corpus has
        them), and the positions in each that hold corpus tokens."""
        trained = max(int(d.meta.get("training_tokens") or 0) for d in self.dictionaries)
        windows = load_windows(self.corpus, self.lm, trained, self.cache_dir, max_tokens)
        return windows.heldout[: max(1, -(-max_tokens // windows.tokens_per_window))], windows.valid

    def check_widths(self) -> None:
        """Each dictionary's widths against the model's activations at its hooks."""
        hooks = list({h for d in self.dictionaries for h in (d.input_hook, d.target_hook)})
        for h in hooks:
            if h not in self.lm.bridge.hook_dict:
                raise ConfigError(f"hookpoint '{h}' (recorded by {self._who(h)}) does not exist in "
                                  f"model {self.spec.name}.")
        probe = torch.tensor([self.lm.prefix_ids + self.lm.encode("width check") + self.lm.suffix_ids])
        acts = self.lm.run_to(probe, hooks)
        for d in self.dictionaries:
            for hook, want in ((d.input_hook, d.dictionary.d_in), (d.target_hook, d.dictionary.d_out)):
                if acts[hook].shape[-1] != want:
                    raise ConfigError(f"{d.source}: the dictionary expects width {want} at {hook}, but "
                                      f"model {self.spec.name} has {acts[hook].shape[-1]} there: it was "
                                      "trained on another model or layer.")

    def _who(self, hook: str) -> str:
        return ", ".join(str(d.source) for d in self.dictionaries if hook in (d.input_hook, d.target_hook))


def open_runs(paths: list[str | Path], units: Units = "model", model: str | dict | ModelSpec | None = None
              ) -> OpenedRuns:
    """Open every dictionary under `paths` (run dirs, sweep dirs, globs, exported or foreign
    folders) in `units`, all on one model. `model` names a conf/model option for folders that
    do not say which model they belong to in tcx's terms (or is its node, or its spec)."""
    if not paths:
        raise ConfigError("nothing to open: give run=<run dir> or dictionaries=[dir, ...].")
    dictionaries = [d for path, fmt in find_sources(paths) for d in fmt.read(path, units)]
    for d in dictionaries:
        d.dictionary.eval()  # inference behaviour (BatchTopK's threshold, no AuxK)
    names = {d.meta.get("model") for d in dictionaries} - {None}
    configs = [d.model_config for d in dictionaries if d.model_config]
    if isinstance(model, str):
        model_config = model_config_named(model)
    elif model is not None:  # tcx-eval model=<option> composes its node; a validated config holds its spec
        model_config = node_of(model) if isinstance(model, ModelSpec) else OmegaConf.to_container(
            OmegaConf.create(model), resolve=True)
    elif configs:
        model_config = configs[0]
    elif len(names) == 1:
        model_config = model_config_named(next(iter(names)))
    else:
        raise ConfigError(f"{[str(d.source) for d in dictionaries]} do not name their model: add model=<option>.")
    known = {model_config["name"], model_config.get("path")}
    # An explicit `model` overrides the names foreign folders give (the width check still applies).
    strangers = [d for d in dictionaries if model is None and d.meta.get("model") not in (None, *known)]
    if strangers or len({c["name"] for c in configs}) > 1:
        listing = ", ".join(f"{d.source} ({d.meta.get('model')})" for d in dictionaries)
        raise ConfigError(f"these dictionaries were trained on different models and cannot be used in "
                          f"one: {listing}.")
    first = next((d for d in dictionaries if d.data_config), None)
    extra = first.extra if first else {}
    data_config, cache_dir = (first.data_config if first else None), extra.get("cache_dir")
    if data_config is None or cache_dir is None:  # a foreign folder: the corpus and cache a run gets by default
        defaults = compose_train([])
        data_config = data_config or OmegaConf.to_container(defaults.data, resolve=True)
        cache_dir = cache_dir or defaults.cache_dir
    return OpenedRuns(dictionaries, model_config, data_config, cache_dir, extra.get("model_dtype") or "float32")


def firing_frequency(runs: OpenedRuns, max_tokens: int, batch_windows: int = 16) -> list[torch.Tensor]:
    """Each dictionary's per-feature firing frequency on `max_tokens` held-out tokens."""
    heldout, valid = runs.heldout(max_tokens)
    hooks = list({d.input_hook for d in runs.dictionaries})
    fired = [torch.zeros(d.dictionary.d_sae, dtype=torch.float64) for d in runs.dictionaries]
    rows = 0
    with torch.inference_mode():
        for start in range(0, len(heldout), batch_windows):
            acts = runs.lm.run_to(heldout[start: start + batch_windows], hooks)
            for d, count in zip(runs.dictionaries, fired, strict=True):
                x = acts[d.input_hook][:, valid].reshape(-1, d.dictionary.d_in).to(d.dictionary.W_enc.dtype)
                count += (d.dictionary.eval().encode_decode(x)[0] != 0).sum(0).double()
            rows += x.shape[0]
    return [count / rows for count in fired]
