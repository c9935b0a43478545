"""`tcx-train`: train a transcoder (or a bank of dictionaries) on one layer of a model.

    tcx-train                                     # the paper's ReLU transcoder, MiniLM layer 3
    tcx-train dictionary=sae dictionary.l1_coeff=10 layer=2
    tcx-train experiment=smoke                    # tiny model, under a minute
    tcx-train 'bank=[{l1_coeff: 1.0}, {l1_coeff: 10.0}]'  # two dictionaries, one model pass
    tcx-train -m layer=0,1,2 hydra/launcher=slurm # one job per layer on a SLURM cluster
"""

from __future__ import annotations

import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, report_errors
from tcx.config import register_configs
from tcx.errors import RunDirBusyError
from tcx.io import write_json

register_configs()

_NOT_TAGS = {"bank", "group", "cache_dir", "experiment", "trainer.progress_bar", "resume"}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_errors
def main(cfg: DictConfig) -> None:
    from tcx.training.run import train  # heavy imports after Hydra has parsed --help

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:
        train(cfg, run_dir)
        return
    # A sweep point carries its own settings as W&B tags, beside the sweep's name as group.
    point = [o for o in hc.overrides.task if o.split("=")[0].lstrip("+~") not in _NOT_TAGS
             and not o.startswith("hydra")]
    cfg.tags = [*cfg.tags, *point]
    # In a sweep one failing point must not stop the others: record it, let Hydra go on.
    try:
        train(cfg, run_dir)
    except RunDirBusyError as e:  # the folder is another live process's: write nothing into it
        print(f"error: point {run_dir} not started: {e}")
    except Exception as e:  # noqa: BLE001 - every failure of a point is reported the same way
        write_json(run_dir / "error.json", {"error": f"{type(e).__name__}: {e}".splitlines()[0],
                                            "traceback": traceback.format_exc()})
        print(f"error: point {run_dir} failed: {e}")


if __name__ == "__main__":
    main()
