"""tcx's own folders: a run or member dir (`dictionary.safetensors` + `dictionary.json`, with the
run's `config.yaml` beside), or a folder `tcx-export` wrote (`tcx.json` beside another format)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from tcx.config import load_config
from tcx.dictionaries.io import META, WEIGHTS, Units, load_dictionary
from tcx.errors import CheckpointError
from tcx.runs.formats.base import Format
from tcx.runs.record import OpenedDictionary


class Native(Format):
    name = "tcx"
    description = f"a tcx-train run or member dir ({WEIGHTS} + {META})"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / WEIGHTS).is_file()

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        dictionary, meta = load_dictionary(path, units)
        for key in ("input_hook", "target_hook"):
            if key not in meta:
                raise CheckpointError(f"{path / META} does not record `{key}`: it cannot be placed in "
                                      "the model. Re-save it with a current tcx.")
        opened = OpenedDictionary(dictionary, meta, path, self.name, meta.get("model_config"),
                                  meta.get("data_config"))
        config_path = path / "config.yaml"
        if config_path.is_file():  # the run's own config: model and corpus exactly as trained
            config = OmegaConf.to_container(load_config(config_path), resolve=True)
            opened.model_config = config.get("model") or opened.model_config
            opened.data_config = config.get("data") or opened.data_config
            opened.extra = {"cache_dir": config.get("cache_dir"),
                            "model_dtype": (config.get("trainer") or {}).get("model_dtype")}
        return [opened]

    def write(self, runs, out: Path) -> None:
        """tcx run folders (dictionary files + a config.yaml that tcx-eval and tcx-compare read):
        `out` itself for one dictionary, `out/<name>/` for several."""
        from tcx.config import compose_train
        from tcx.dictionaries.io import describe, save_dictionary

        for d in runs.dictionaries:
            folder = out if len(runs.dictionaries) == 1 else out / d.name
            rewritten = {*describe(d.dictionary), "units", "normalisation"}  # save_dictionary writes these
            keep = {k: v for k, v in d.meta.items() if k not in rewritten}
            save_dictionary(d.dictionary, folder, {**keep, "model": runs.spec.name,
                                                   "model_config": runs.model_config,
                                                   "data_config": runs.data_config})
            config = compose_train([])
            config.model, config.data = runs.model_config, runs.data_config
            config.layer = d.layer if d.layer is not None else config.layer
            config.dictionary = {"_target_": d.meta["kind"], **d.meta["config"]}
            config.seed = d.meta.get("seed", config.seed)
            (folder / "config.yaml").write_text(OmegaConf.to_yaml(config, resolve=True))
