"""Finding runs and reading each one's config and metrics into a flat row."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tcx import metrics_file
from tcx.compare.wandb_log import find_log, read_wandb
from tcx.errors import ConfigError, TcxError
from tcx.run_dir import is_set_aside

REQUIRED = ("l0", "fvu")


@dataclass
class Runs:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Run folder -> why it was left out (no metrics yet, half-written, ...)."""


def run_dirs(paths: list[str]) -> list[Path]:
    """Every folder holding a dictionary run under the given dirs or globs (sweep dirs included)."""
    found: set[Path] = set()
    for pattern in paths:
        matches = [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]
        for path in matches:
            if not path.exists():
                raise ConfigError(f"{pattern}: no such run dir or sweep dir.")
            markers = [path / "config.yaml", *path.rglob("config.yaml"), *path.rglob("wandb/*run-*/run-*.wandb")]
            for marker in markers:
                run = marker.parents[2] if marker.suffix == ".wandb" else marker.parent
                if marker.is_file() and not is_set_aside(run, below=path):
                    found.add(run)
    return sorted(found)


def kind_of(config: dict[str, Any]) -> str:
    d = config.get("dictionary", {})
    name = str(d.get("_target_", "?")).rsplit(".", 1)[-1].removesuffix("Config")
    return f"{name} {'transcoder' if d.get('input_site') != d.get('target_site') else 'SAE'}"


def read(directory: Path) -> dict[str, Any]:
    """A run's config and metrics from config.yaml + metrics.json, or from its W&B log alone."""
    log = find_log(directory)
    wandb_run = read_wandb(log) if log and not metrics_file.exists(directory) else None
    if (directory / "config.yaml").is_file():
        config = yaml.safe_load((directory / "config.yaml").read_text())
    elif wandb_run is not None:
        config = wandb_run.config
    else:
        raise ValueError("no config.yaml and no W&B log")
    if config.get("bank"):
        raise ValueError("a bank's run dir (its members are the runs)")
    if wandb_run is not None:
        metrics = {k.removeprefix("final/"): v for k, v in wandb_run.summary.items() if k.startswith("final/")}
    elif metrics_file.exists(directory):
        metrics = metrics_file.read(directory)
    else:
        raise ValueError("no metrics.json (still running, or failed)")
    missing = [k for k in REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"metrics.json lacks {missing}")
    params = {f"dictionary.{k}": v for k, v in (config.get("dictionary") or {}).items() if k != "_target_"}
    return {"run": str(directory), "model": config.get("model", {}).get("name"), "layer": config.get("layer"),
            "kind": kind_of(config), "group": config.get("group"), "seed": config.get("seed"), **params,
            **{k: v for k, v in metrics.items() if isinstance(v, int | float | str)}}


def gather(paths: list[str]) -> Runs:
    runs = Runs()
    dirs = run_dirs(paths)
    if not dirs:
        raise ConfigError(f"no runs under {paths}: a run dir holds config.yaml and metrics.json.")
    for directory in dirs:
        try:
            runs.rows.append(read(directory))
        except (ValueError, OSError, yaml.YAMLError, TcxError) as e:
            if "a bank's run dir" not in str(e):
                runs.skipped[str(directory)] = str(e).splitlines()[0]
    return runs
