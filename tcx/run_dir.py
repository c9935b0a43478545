"""What a run dir holds: the run's own outputs, and a folder per bank member holding the same."""

from __future__ import annotations

import re
from pathlib import Path

OUTPUTS = ("checkpoints", "logs", "wandb", "config.yaml", "metrics.json", "eval.json", "error.json",
           "dictionary.safetensors", "dictionary.json", "feature_density.png")
"""What a run writes in its folder, and each bank member in its own."""

MACHINERY = ("checkpoints", "logs", "wandb")
"""Folders of a run that are never a member's."""


SET_ASIDE = (".", "old-")
"""Prefixes of folders that hold no live run: hidden ones, and the `old-<time>/` that `resume=false`
moves an earlier run into (kept whole, never read as a run again)."""


_NAME_CHARS = "A-Za-z0-9_.,=+-"
"""What a bank member's folder name is made of."""


def folder_name(text: str) -> str:
    """`text` (a member's settings, say) as a member's folder name: other characters become `_`."""
    return re.sub(f"[^{_NAME_CHARS}]", "_", text)


def is_member_name(name: str) -> bool:
    """A plain folder of the run dir: its characters, not set aside, none of the run's own names."""
    return bool(re.fullmatch(f"[A-Za-z0-9_][{_NAME_CHARS}]*", name)) and not name.startswith(SET_ASIDE) \
        and name not in OUTPUTS


def is_set_aside(path: Path, below: Path | None = None) -> bool:
    """`path`, or a folder between `below` and it, is hidden or an earlier run moved aside."""
    parts = path.relative_to(below).parts if below is not None else (path.name,)
    return any(part.startswith(SET_ASIDE) for part in parts)


def member_dirs(run_dir: Path) -> list[Path]:
    """The bank members' folders of a run dir, sorted: subfolders holding a member's outputs (not
    set aside, not the run's machinery)."""
    return sorted(p for p in run_dir.iterdir()
                  if p.is_dir() and not is_set_aside(p) and p.name not in MACHINERY
                  and any((p / name).exists() for name in OUTPUTS))
