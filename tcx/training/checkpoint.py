"""Checkpoints: written atomically, checked before a resume, never overwritten when unreadable."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tcx.errors import CheckpointError
from tcx.io import atomic_open

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A checkpoint is complete or absent: torch.save to a temp file, fsync, then rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def tidy_run_dir(run_dir: Path, resume: bool) -> None:
    """Before a run starts, under its lock (no other process can be writing): remove the temp files of
    writes a killed process never finished (`atomic_path`'s `.<name>.<random>.tmp`), and with
    `resume=false` move `checkpoints/` aside to `checkpoints.old-<time>/` (kept, never deleted)."""
    for stale in (p for p in run_dir.rglob(".*.tmp") if p.is_file()):
        stale.unlink(missing_ok=True)
        log.warning("removed %s, a write that a killed process never finished", stale)
    if not resume and (run_dir / "checkpoints").exists():
        aside = run_dir / f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(run_dir / "checkpoints", aside)
        log.warning("resume=false: the old checkpoints were moved to %s", aside)


def resume_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """`checkpoints/last.ckpt` of `run_dir` and its step, if there is one, after checking it can be read."""
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "state_dict" not in state or "global_step" not in state:
            raise ValueError("it has no state_dict/global_step")
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same answer
        raise CheckpointError(
            f"cannot resume from {path}: the file is corrupt ({type(e).__name__}: {e}). It was left "
            "untouched. Rerun with resume=false to start this run afresh (the old checkpoints are kept, "
            "moved to checkpoints.old-<time>/), or restore a good copy of it.") from None
    return path, int(state["global_step"])
