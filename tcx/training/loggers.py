"""Logger factories for `conf/logger/*.yaml`: each takes the member's folder and run name."""

from __future__ import annotations

import csv
import io
import netrc
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from tcx.io import write_text


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(Path.home() / ".netrc").authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, run_name: str, project: str, group: str | None = None,
                 tags: list[str] | None = None, mode: str = "auto", entity: str | None = None
                 ) -> WandbLogger:
    """W&B online when credentials exist (or mode=online), else offline: `wandb sync` uploads the
    run later. Several runs may be open at once (one per bank member)."""
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")
    return WandbLogger(name=run_name, save_dir=save_dir, project=project, group=group,
                       tags=list(tags or []), entity=entity, mode=mode, reinit="create_new")


def csv_logger(save_dir: str, run_name: str, **_: object) -> CSVLogger:
    """Metrics to `<member dir>/logs/metrics.csv`, written at every log (so a killed run keeps its
    curves) and kept across a resume: no account, no network."""
    return _ResumableCSVLogger(save_dir=save_dir, name="logs", version="", flush_logs_every_n_steps=1)


class _KeptRowsWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it opens. This one keeps its
    rows up to the first step logged again (a resumed run redoes the steps after its checkpoint)
    and rewrites the file with them, atomically, at its first save."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        self._earlier = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []

    def save(self) -> None:
        if not self.metrics or self._earlier is None:
            return super().save()
        first = min(int(m["step"]) for m in self.metrics)
        rows = [r for r in self._earlier if r.get("step") and int(float(r["step"])) < first] + self.metrics
        self._earlier, self.metrics = None, []
        self.metrics_keys = sorted(set().union(*rows))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, buffer.getvalue())


class _ResumableCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> _KeptRowsWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptRowsWriter(log_dir=self.log_dir)
        return self._experiment
