"""After a sweep: which points finished, which failed and why, written to sweep.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tcx import metrics_file
from tcx.errors import TcxError
from tcx.io import write_json
from tcx.run_dir import member_dirs


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def job_log(job: Path, sweep_dir: Path) -> Path | None:
    """The job's own log: Hydra's, else submitit's stderr for it."""
    logs = sorted(job.glob("*.log")) + sorted((sweep_dir / ".submitit").glob(f"*_{job.name}/*_log.err"))
    return logs[0] if logs else None


def points_of(job: Path) -> list[Path]:
    """A packed job's points are its member folders; an unpacked job is one point."""
    return member_dirs(job) or [job]


def collect(sweep_dir: Path, name: str, expected_jobs: int, since: float = 0.0) -> dict[str, Any]:
    """Every point's status. A job that failed as a whole after `since` (this invocation: e.g. its
    resume check refused a changed override) fails its points, whatever they finished before."""
    points = []
    jobs = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    for job in jobs:
        log = job_log(job, sweep_dir)
        refused = job / "error.json"
        refused = refused if refused.is_file() and refused.stat().st_mtime >= since else None
        for point in points_of(job):
            row: dict[str, Any] = {"dir": str(point), "job": int(job.name), "log": str(log) if log else None}
            if refused is not None:
                row.update(status="failed", error=json.loads(refused.read_text())["error"])
            elif metrics_file.exists(point):
                try:
                    row.update(status="done", metrics=metrics_file.read(point))
                except TcxError as e:
                    row.update(status="failed", error=str(e))
            else:
                err = point / "error.json" if (point / "error.json").is_file() else job / "error.json"
                row.update(status="failed", error=json.loads(err.read_text())["error"] if err.is_file()
                           else "stopped before the end (cancelled or killed); its checkpoint is kept, so "
                           "rerunning the sweep resumes it" if (job / "checkpoints" / "last.ckpt").is_file()
                           else "no metrics.json was written (killed, or failed outside tcx): see the log")
            points.append(row)
    started = {int(job.name) for job in jobs}
    for missing in sorted(set(range(expected_jobs)) - started):
        points.append({"dir": str(sweep_dir / str(missing)), "job": missing, "status": "failed",
                       "error": "the job never started (see the launcher's output)", "log": None})
    points.sort(key=lambda p: p["job"])
    summary = {"name": name, "sweep_dir": str(sweep_dir), "points": points,
               "done": sum(p["status"] == "done" for p in points),
               "failed": sum(p["status"] == "failed" for p in points)}
    write_json(sweep_dir / "sweep.json", summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\nsweep {summary['name']}: {summary['done']} done, {summary['failed']} failed "
          f"({summary['sweep_dir']}/sweep.json)")
    for p in summary["points"]:
        if p["status"] == "done":
            m = p["metrics"]
            print(f"  done    {p['dir']}  L0 {m.get('l0', float('nan')):.1f}  FVU {m.get('fvu', float('nan')):.4f}")
        else:
            print(f"  FAILED  {p['dir']}: {p['error']}" + (f"\n          log: {p['log']}" if p["log"] else ""))
