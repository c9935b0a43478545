"""Surviving preemption: checkpoint on SLURM's warning signal, then let submitit requeue the job.

SLURM sends SIGUSR2 some time before it preempts a job or its time runs out (the launcher's
`signal_delay_s`). The handler only notes the signal; at the next step boundary the callback writes
`last.ckpt` (atomically) and passes the signal on to whoever handled it before, which under
submitit requeues the job. The requeued job runs `tcx-train` again in the same folder and resumes
from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class CheckpointOnSignal(L.Callback):
    def __init__(self, path: Path, signum: int = signal.SIGUSR2):
        self.path, self.signum = path, signum
        self.previous = None
        self.pending = None

    def _note(self, signum, frame) -> None:
        self.pending = (signum, frame)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.signum, self._note)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)
            self.previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.pending is None:
            return
        signum, frame = self.pending
        trainer.save_checkpoint(self.path)
        log.warning("signal %d: checkpoint at step %d written to %s; handing over for requeue",
                    signum, trainer.global_step, self.path)
        previous, self.previous = self.previous, None
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        else:  # nobody else listens: end the way the signal would have ended us
            os.kill(os.getpid(), signum)
