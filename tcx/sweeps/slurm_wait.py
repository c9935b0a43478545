"""Waiting on SLURM jobs across a requeue.

submitit decides that a job has ended from `sacct`, which reads SLURM's accounting database. Around a
requeue (a preempted or timed-out point that checkpointed and asked to run again) the database can
report the first attempt's end, FAILED or CANCELLED, while slurmctld already holds the job PENDING
or RUNNING again. Stock submitit believes it: Hydra's multirun then stops waiting, calls the point
failed, and the requeued job trains on with nobody to collect it. This watcher asks slurmctld
(`squeue`) before it believes a final state, and while the job is still queued it drops the stale
state and waits on.
"""

from __future__ import annotations

import subprocess

from submitit.slurm.slurm import SlurmInfoWatcher

# squeue's states for a job that has not ended (it also lists ended ones for a few minutes).
LIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
        "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def queued_state(job_id: str) -> str | None:
    """slurmctld's state for the job, or None where it no longer knows it (or does not answer)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = out.stdout.split()
    return states[0] if out.returncode == 0 and states else None


class RequeueAwareWatcher(SlurmInfoWatcher):
    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        if not super().is_done(job_id, mode):
            return False
        if job_id in self._finished:  # confirmed once already
            return True
        if queued_state(job_id) in LIVE:
            self._info_dict.pop(job_id, None)  # "UNKNOWN" until the next sacct call: not done
            return False
        return True
