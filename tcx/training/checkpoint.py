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
from tcx.run_dir import OUTPUTS, member_dirs

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A checkpoint is complete or absent: torch.save to a temp file, fsync, then rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def tidy_run_dir(run_dir: Path, resume: bool) -> None:
    """Before a run starts, under its lock: remove the temp files of checkpoint writes a killed
    process never finished (`atomic_path`'s `.<name>.<random>.tmp`; nothing else writes there). With
    `resume=false` move the old run aside, kept whole, into `old-<time>/`: checkpoints, logs and
    outputs, the members' folders with theirs. A requeued SLURM job resumes instead: `resume=false`
    is for the start the user asked for, not for every restart."""
    for stale in (p for p in (run_dir / "checkpoints").glob(".*.tmp") if p.is_file()):
        stale.unlink(missing_ok=True)
        log.warning("removed %s, a write that a killed process never finished", stale)
    if resume:
        return
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        log.warning("resume=false, but this is a requeued SLURM job: it resumes where it stopped")
        return
    old = [p for p in sorted(run_dir.iterdir()) if p.name in OUTPUTS] + member_dirs(run_dir)
    if not old:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = (f"old-{stamp}" + (f"-{n}" if n else "") for n in range(1000))
    aside = next(run_dir / name for name in names if not (run_dir / name).exists())
    aside.mkdir()
    for path in old:
        os.replace(path, aside / path.name)
    log.warning("resume=false: the previous run (%s) was moved to %s", ", ".join(p.name for p in old), aside)


def resume_checkpoint(run_dir: Path) -> tuple[Path, int, str | None] | None:
    """`checkpoints/last.ckpt` of `run_dir`, its step and the config it was trained with (YAML; None
    in checkpoints from before tcx kept it), if there is one, after checking it can be read."""
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
            "untouched. Rerun with resume=false to start this run afresh (the old run is kept, moved to "
            "old-<time>/ in the run dir), or restore a good copy of it.") from None
    return path, int(state["global_step"]), state.get("tcx_config")
