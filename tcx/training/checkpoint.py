"""Checkpoints: written atomically, checked before a resume, never overwritten when unreadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tcx.errors import CheckpointError
from tcx.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """A checkpoint is complete or absent: torch.save to a temp file, then rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """`checkpoints/last.ckpt` of `run_dir` if there is one, after checking it can be read."""
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
            "untouched; move it away to start this run dir afresh, or restore a copy.") from None
    return path
