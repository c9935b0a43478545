"""Rerunning a sweep into its folder finishes that sweep: a changed grid or override is refused.

A changed grid used to start the new points' bank in the old job's folder, be refused there (its
checkpoint holds another bank), and leave the old points reported as the new sweep's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcx.errors import ConfigError
from tcx.io import write_json
from tcx.sweeps.spec import SweepSpec

RECORD = "sweep_spec.json"


def what_is_swept(spec: SweepSpec) -> dict[str, Any]:
    """The sweep file: its points and jobs. (A changed override on the command line reaches jobs that
    already ran, whose resume check refuses what would change their results.)"""
    return {"name": spec.name, "grid": spec.grid, "overrides": spec.overrides, "pack": spec.pack}


def check_same_sweep(sweep_dir: Path, spec: SweepSpec) -> Path | None:
    """Refuse a sweep dir holding another sweep; record this one in a new (or unrecorded) one and
    return the record's path (None: it was there)."""
    now, path = what_is_swept(spec), sweep_dir / RECORD
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        write_json(path, now)
        return path
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{path} cannot be read: is {sweep_dir} a tcx sweep? Nothing was submitted.") from None
    if before != now:
        changed = [k for k in now if before.get(k) != now[k]]
        detail = "; ".join(f"{k}: {before.get(k)} -> {now[k]}" for k in changed)
        raise ConfigError(f"hydra.sweep.dir={sweep_dir} holds a sweep with other settings ({detail}). A rerun "
                          "into a sweep's folder finishes that same sweep; start a changed one in a new folder "
                          "(leave hydra.sweep.dir out). Nothing was submitted.")
    return None
