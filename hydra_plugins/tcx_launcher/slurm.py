"""tcx's SLURM launcher (hydra/launcher=slurm): Hydra's submitit launcher, waiting through requeues.

A Hydra plugin must live under `hydra_plugins`; the logic is in `tcx.sweeps.slurm_wait`.
"""

from __future__ import annotations

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from submitit.slurm.slurm import SlurmJob

        from tcx.sweeps.slurm_wait import RequeueAwareWatcher

        # submitit shares one watcher between all SLURM jobs of the process (a class attribute);
        # this process is the sweep's multirun, so replacing it affects only this sweep's jobs.
        if not isinstance(SlurmJob.watcher, RequeueAwareWatcher):  # (its polling interval is private)
            SlurmJob.watcher = RequeueAwareWatcher(delay_s=getattr(SlurmJob.watcher, "_delay_s", 600))
        return super().launch(job_overrides, initial_job_idx)
