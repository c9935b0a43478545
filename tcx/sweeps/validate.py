"""Checking a sweep's grid keys before anything is launched (values are checked per point, so one
bad value fails its point only)."""

from __future__ import annotations

import dataclasses

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import get_class

from tcx.config import CONF_DIR, register_configs
from tcx.errors import ConfigError
from tcx.sweeps.spec import SweepSpec


def check_grid_keys(spec: SweepSpec, base: list[str]) -> None:
    register_configs()
    kinds = [f"dictionary={k}" for k in spec.grid.get("dictionary", [])] or [None]
    plain = [k for k in spec.grid if not SweepSpec.is_dictionary_key(k)]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for kind in kinds:
            point = [f"{k}={spec.grid[k][0]}" for k in plain] + ([kind] if kind else [])
            try:
                cfg = compose("train", overrides=[*base, *point])
            except HydraException as e:
                raise ConfigError(f"sweep {spec.name}: {str(e).splitlines()[0]}") from None
            fields = {f.name for f in dataclasses.fields(get_class(cfg.dictionary._target_))}
            for key in spec.grid:
                if key.startswith("dictionary.") and key.removeprefix("dictionary.") not in fields:
                    raise ConfigError(f"sweep {spec.name}: grid key '{key}' is not a field of "
                                      f"{cfg.dictionary._target_} ({sorted(fields)}).")
