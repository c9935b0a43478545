"""`tcx-train`: train a transcoder (or a bank of dictionaries) on one layer of a model.

    tcx-train                                     # the paper's ReLU transcoder, MiniLM layer 3
    tcx-train dictionary=sae dictionary.l1_coeff=10 layer=2
    tcx-train experiment=smoke                    # tiny model, under a minute
    tcx-train 'bank=[{l1_coeff: 1.0}, {l1_coeff: 10.0}]'  # two dictionaries, one model pass
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, report_errors
from tcx.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_errors
def main(cfg: DictConfig) -> None:
    from tcx.training.run import train  # heavy imports after Hydra has parsed --help

    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
