"""The sweep file: a name, the base overrides, and a grid.

    name: l1-frontier
    overrides: [layer=3, trainer.max_tokens=1_000_000]
    grid:
      dictionary: [transcoder, sae]
      dictionary.l1_coeff: [1.0, 3.0, 10.0]
    pack: true          # optional: points differing only in dictionary.* or layer share one job (a bank)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tcx.errors import ConfigError


@dataclass
class SweepSpec:
    name: str
    grid: dict[str, list[Any]]
    overrides: list[str] = field(default_factory=list)
    pack: bool = True
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            known = sorted(p.name for p in Path("sweeps").glob("*.yaml")) if Path("sweeps").is_dir() else []
            raise ConfigError(f"sweep file {path} does not exist" + (f"; sweeps/ has {known}." if known else "."))
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep file {path} is not valid YAML: {e}") from None
        unknown = set(raw) - {"name", "grid", "overrides", "pack"}
        if unknown:
            raise ConfigError(f"sweep file {path}: unknown keys {sorted(unknown)} (name, overrides, grid, pack).")
        grid = raw.get("grid") or {}
        if not isinstance(grid, dict) or not grid or any(not isinstance(v, list) or not v for v in grid.values()):
            raise ConfigError(f"sweep file {path}: `grid` must map config keys to non-empty lists of values.")
        name = str(raw.get("name") or path.stem)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"sweep file {path}: name '{name}' may use letters, digits, '.', '_', '-'.")
        overrides = raw.get("overrides") or []
        if not isinstance(overrides, list) or any(not isinstance(o, str) for o in overrides):
            raise ConfigError(f"sweep file {path}: `overrides` must be a list of `key=value` strings, "
                              f"e.g. [layer=3, trainer.max_tokens=1_000_000]; got {overrides!r}.")
        pack = raw.get("pack", True)
        if not isinstance(pack, bool):
            raise ConfigError(f"sweep file {path}: `pack` must be true or false (unquoted), got {pack!r}.")
        return cls(name, grid, overrides, pack, path)

    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*self.grid.values())]

    @staticmethod
    def is_dictionary_key(key: str) -> bool:
        return key == "dictionary" or key.startswith("dictionary.")

    @staticmethod
    def is_bank_key(key: str) -> bool:
        """What members of one bank may differ in: the dictionary, and the layer (the model then
        runs once, to the deepest)."""
        return key == "layer" or SweepSpec.is_dictionary_key(key)
