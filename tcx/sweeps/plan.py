"""From a sweep spec to the overrides of one Hydra multirun of tcx-train.

Packed (the default): grid keys outside `dictionary` and `layer` become multirun sweeps (one job
each), and the `dictionary` and `layer` part of the grid becomes that job's bank, trained from one
pass of the model (to the deepest layer).
Unpacked: every grid key is a multirun sweep, one job per point.
"""

from __future__ import annotations

import itertools
import re
import sys
from typing import Any

from tcx.run_dir import folder_name
from tcx.sweeps.spec import SweepSpec


def hydra_value(value: Any) -> str:
    """A sweep-file value (YAML-loaded: None, bool, number, string, list, dict) in Hydra's override
    grammar, so that Hydra reads it back as the same value: None is `null`, not the string 'None'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z0-9_.+-]+", text) and text.lower() not in ("null", "true", "false")
    return text if plain else quoted(text)


def quoted(text: str) -> str:
    """`text` as a quoted string of Hydra's grammar, which reads every character literally but a
    quote, and a run of backslashes before a quote (or before the closing one), which it halves."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), text)
    return f"'{escaped}'"


def member(point: dict[str, Any]) -> dict[str, Any]:
    """A bank entry: `dictionary` names the kind, `dictionary.k` becomes `k`, `layer` stays."""
    entry: dict[str, Any] = {}
    for key, value in point.items():
        entry["dictionary" if key == "dictionary" else key.removeprefix("dictionary.")] = value
    name = "-".join(f"{k.removeprefix('dictionary.')}={v}" if k != "dictionary" else str(v) for k, v in point.items())
    entry["name"] = folder_name(name)
    return entry


def bank_literal(entries: list[dict[str, Any]]) -> str:
    return f"bank={hydra_value(entries)}"


def multirun_overrides(spec: SweepSpec) -> list[str]:
    job_keys = [k for k in spec.grid if not (spec.pack and SweepSpec.is_bank_key(k))]
    bank_keys = [k for k in spec.grid if k not in job_keys]
    out = [f"{k}={','.join(hydra_value(v) for v in spec.grid[k])}" for k in job_keys]
    if bank_keys:
        combos = [dict(zip(bank_keys, values, strict=True))
                  for values in itertools.product(*(spec.grid[k] for k in bank_keys))]
        out.append(bank_literal([member(c) for c in combos]))
    return out


def jobs(spec: SweepSpec) -> int:
    return len(list(itertools.product(*(v for k, v in spec.grid.items()
                                        if not (spec.pack and SweepSpec.is_bank_key(k))))))


def multirun_command(module: str, spec: SweepSpec, *extra: str) -> list[str]:
    """`python -m <module> --multirun` over the sweep's jobs (each a bank where packed), then `extra`."""
    return [sys.executable, "-m", module, "--multirun", *spec.overrides, *multirun_overrides(spec), *extra]
