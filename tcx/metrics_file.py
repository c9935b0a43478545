"""metrics.json: a run's numbers in one file, which training, tcx-eval, tcx-features and
`tcx-circuit quality` each add to, and tcx-compare and sweep.json read. Its one home.

Training writes the training-window summary and, with held-out evaluation on, the held-out numbers;
the later stages merge theirs in with `update`. What each adds: `TRAINING_KEYS` here, the score
keys of tcx/features/run.py, `QUALITY_COLUMNS` of tcx/circuits/config.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcx.errors import CheckpointError
from tcx.io import write_json

NAME = "metrics.json"

TRAINING_KEYS = ("l0", "fvu", "mse")
"""Keys both a training window and a held-out evaluation measure: held-out takes the plain name and
the training window's value moves to `train_<key>`. `dead_fraction` is not one: it stays the
training window's (no firing in `dead_window_tokens`, as the peers report it); the held-out count
is `unfired_fraction`, features that never fired in `eval_tokens` held-out tokens, which counts a
live feature of frequency 1/eval_tokens as unfired 37% of the time."""


def path(run_dir: Path) -> Path:
    return Path(run_dir) / NAME


def exists(run_dir: Path) -> bool:
    return path(run_dir).is_file()


def read(run_dir: Path) -> dict[str, Any]:
    """The run's metrics; {} where it has none (yet)."""
    if not exists(run_dir):
        return {}
    try:
        metrics = json.loads(path(run_dir).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        metrics = e
    if not isinstance(metrics, dict):  # tcx writes it whole (temp file + rename): damaged outside tcx
        raise CheckpointError(f"{path(run_dir)} is not a JSON object ({metrics}). Move it aside: the "
                              f"dictionary is intact, and `tcx-eval run={run_dir}` writes the held-out numbers "
                              "again (a finished run's training-window numbers are in its logs).")
    return metrics


def write(run_dir: Path, metrics: dict[str, Any]) -> None:
    write_json(path(run_dir), metrics)


def merge(metrics: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """`row` over `metrics`; a training-window value a held-out one displaces moves to `train_<key>`."""
    merged = dict(metrics)
    for key, value in row.items():
        if key in merged and f"train_{key}" not in merged and key in TRAINING_KEYS:
            merged[f"train_{key}"] = merged[key]
        merged[key] = value
    return merged


def update(run_dir: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Merge `row` into the run's metrics.json (written atomically) and return the result."""
    merged = merge(read(run_dir), row)
    write(run_dir, merged)
    return merged
