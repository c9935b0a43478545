"""`tcx-sweep`: run a sweep file through Hydra multirun and report every point.

    tcx-sweep sweeps/smoke.yaml                                   # in this process, one job after another
    tcx-sweep sweeps/l1-frontier.yaml hydra/launcher=local        # submitit, local processes
    tcx-sweep sweeps/all-layers.yaml hydra/launcher=slurm hydra.launcher.partition=gpu
    tcx-sweep sweeps/smoke.yaml sweep.pack=false                  # one job per point

Points that differ only in `dictionary.*` share one job and one pass of the model (a bank).
Writes <sweep dir>/sweep.json; exits 1 if any point failed. Rerun with `hydra.sweep.dir=<that dir>`
to finish a sweep that was cancelled or failed in part: finished points return at once (no model
load), stopped ones resume from their checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tcx.cli.common import report_errors
from tcx.errors import ConfigError
from tcx.sweeps.collect import collect, print_summary
from tcx.sweeps.plan import jobs, multirun_command
from tcx.sweeps.rerun import check_same_sweep
from tcx.sweeps.spec import SweepSpec
from tcx.sweeps.validate import check_grid_keys


def slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@report_errors
def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tcx-sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every point, and sweep.pack=")
    args = parser.parse_args(argv)
    spec = SweepSpec.load(args.sweep_file)
    overrides = []
    for o in args.overrides:
        if o.startswith("sweep.pack="):
            value = o.split("=", 1)[1].lower()
            if value not in ("true", "false"):
                raise ConfigError(f"{o}: sweep.pack is true or false; nothing was submitted.")
            spec = dataclasses.replace(spec, pack=value == "true")
        else:
            overrides.append(o)
    sweep_dir = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("hydra.sweep.dir=")),
                     Path("outputs/sweeps") / spec.name / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    overrides = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
    check_grid_keys(spec, spec.overrides + [o for o in overrides if not o.startswith("hydra")])
    if any(o.replace(" ", "") == "hydra/launcher=slurm" for o in overrides) and not slurm_answers():
        raise ConfigError("hydra/launcher=slurm: the SLURM cluster does not answer (`sinfo` failed or is "
                          "missing); nothing was submitted. Start one (scripts/slurm-local.sh up) or use "
                          "hydra/launcher=local.")
    recorded = check_same_sweep(sweep_dir, spec)
    started = time.time()
    command = multirun_command("tcx.cli.train", spec, f"group={spec.name}", f"hydra.sweep.dir={sweep_dir}", *overrides)
    print(f"sweep {spec.name}: {len(spec.points())} points in {jobs(spec)} job(s) -> {sweep_dir}", flush=True)
    status = subprocess.run(command).returncode
    if status != 0 and not any(p.name.isdigit() for p in sweep_dir.glob("*")):
        if recorded is not None:  # nothing ran: the folder may take a corrected command
            recorded.unlink(missing_ok=True)
        raise ConfigError(f"sweep {spec.name}: Hydra's multirun failed before any job started (exit {status}); "
                          "its message is above. Nothing was left running.")
    summary = collect(sweep_dir, spec.name, jobs(spec), started)
    print_summary(summary)
    if summary["failed"]:
        print(f"\nTo finish the {summary['failed']} unfinished point(s) run the same command with "
              f"hydra.sweep.dir={sweep_dir}: finished points are not trained again, stopped ones resume "
              "from their checkpoints.")
    return 1 if summary["failed"] or not summary["points"] else 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
