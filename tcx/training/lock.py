"""One training process per run dir: a second `tcx-train` on a folder that is training is refused.

Two processes in one folder would overwrite each other's checkpoints and outputs. The first takes an
exclusive `flock` on `<run dir>/.lock` and writes its PID and host there; the kernel drops the lock
when that process dies however it dies (SIGKILL, a lost node), so a killed run never blocks its own
resume. Only the global rank 0 takes it: the other DDP ranks of the same run share the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from tcx.errors import RunDirBusyError


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    if rank_zero_only.rank != 0:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").split()
        os.close(fd)
        pid, host = (holder + ["?", "?"])[:2]
        raise RunDirBusyError(
            f"{run_dir} is in use: process {pid} on {host} is training there (its PID is in {path}). Two "
            f"runs in one folder would overwrite each other's checkpoints, so this one did not start and "
            f"wrote nothing. Wait for it to finish, stop it (kill {pid}) and rerun to resume where it "
            "stopped, or choose another folder (hydra.run.dir=...).") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
