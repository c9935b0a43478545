"""`tcx-cache`: run the model once and store the activations a run or a whole sweep trains on.

    tcx-cache                                      # the main job's inputs and targets
    tcx-cache layer=2 'bank=[{}, {input_site: mlp_out}]'
    tcx-cache sweeps/l1-frontier.yaml              # every site that any point of the sweep reads
    tcx-train trainer.activation_cache=true        # then: reads them instead of running the model
    tcx-sweep sweeps/l1-frontier.yaml trainer.activation_cache=true

The cache lives in `<cache_dir>/activations/` (cache_dir: $TCX_CACHE_DIR or ~/.cache/tcx), one
folder per stream (model weights, corpus windows, seed, chunk size), one file per site and chunk.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, report_errors
from tcx.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_errors
def job(cfg: DictConfig) -> None:
    from tcx.activations.fill import fill_cache  # heavy imports after Hydra has parsed --help

    fill_cache(cfg)


@report_errors
def sweep(sweep_file: str, overrides: list[str]) -> int:
    """One job per packed job of the sweep: the union of its points' sites, one model pass."""
    from tcx.sweeps.plan import multirun_command
    from tcx.sweeps.spec import SweepSpec

    spec = dataclasses.replace(SweepSpec.load(sweep_file), pack=True)
    with tempfile.TemporaryDirectory() as tmp:
        return subprocess.run(multirun_command("tcx.cli.cache", spec, f"hydra.sweep.dir={tmp}", *overrides)).returncode


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0].endswith((".yaml", ".yml")) and Path(argv[0]).is_file():
        sys.exit(sweep(argv[0], [o for o in argv[1:] if not o.startswith("sweep.pack=")]))
    if not any(a.startswith("hydra.run.dir=") for a in argv) and "--multirun" not in argv:
        sys.argv += [f"hydra.run.dir={tempfile.mkdtemp(prefix='tcx-cache-')}", "hydra.output_subdir=null"]
    job()


if __name__ == "__main__":
    main()
