"""One training process per run dir: a second `tcx-train` on a folder that is training is refused.

Two processes in one folder would overwrite each other's checkpoints and outputs. The first takes an
exclusive `flock` on `<run dir>/.lock` and writes its PID and host there; the lock goes when that
process dies however it dies (SIGKILL: at once on a local disk; a lost node: when the network
filesystem's lease on it expires), so a killed run never blocks its own resume for long. Only the
global rank 0 takes it: the other DDP ranks of the same run share the folder. Where the filesystem
has no flock, a warning says so and the run goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from tcx.errors import RunDirBusyError

log = logging.getLogger(__name__)


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
        locked = True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):  # EWOULDBLOCK is EAGAIN: another process holds it
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            pid, host = (holder + ["?", "?"])[:2]
            raise RunDirBusyError(
                f"{run_dir} is in use: process {pid} on {host} is training there (its PID is in {path}). "
                f"Two runs in one folder would overwrite each other's checkpoints, so this one did not "
                f"start and left the run's checkpoints and outputs alone. Wait for it to finish, stop it "
                f"(kill {pid}) and rerun to resume where it stopped, or choose another folder "
                "(hydra.run.dir=...).") from None
        locked = False  # no flock on this filesystem (Lustre mounted noflock, NFSv3 without lockd)
        log.warning("%s: cannot lock %s (%s): a second process on this folder would not be refused",
                    run_dir, path, e.strerror)
    try:
        if locked:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except OSError as e:  # a full disk: the lock holds all the same; the run's own writes say so
                log.warning("%s: cannot record this process in %s (%s)", run_dir, path, e.strerror)
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
