"""What a run dir holds: the run's own outputs, and a folder per bank member holding the same."""

from __future__ import annotations

from pathlib import Path

OUTPUTS = ("checkpoints", "logs", "config.yaml", "metrics.json", "eval.json", "error.json",
           "dictionary.safetensors", "dictionary.json", "feature_density.png")
"""What a run writes in its folder, and each bank member in its own."""

MACHINERY = ("checkpoints", "logs", "wandb")
"""Folders of a run that are never a member's."""


def member_dirs(run_dir: Path) -> list[Path]:
    """The bank members' folders of a run dir, sorted: subfolders holding a member's outputs (not
    hidden, not the run's machinery, not an `old-<time>/` that `resume=false` moved aside)."""
    return sorted(p for p in run_dir.iterdir()
                  if p.is_dir() and not p.name.startswith((".", "old-")) and p.name not in MACHINERY
                  and any((p / name).exists() for name in OUTPUTS))
