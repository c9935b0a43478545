"""Bank members: the dictionaries one run trains, each with its own folder, config and logger.

A member's folder holds exactly what a run training it alone would write, and its `config.yaml`
is that solo run's config: `dictionary` replaced by the member's, `bank` empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tcx.config import build_node
from tcx.dictionaries.base import DictionaryConfig
from tcx.errors import ConfigError


@dataclass
class Member:
    name: str
    dir: Path
    cfg: DictionaryConfig
    config: DictConfig
    """The full config of a solo run of this member."""
    logger_cfg: Any = None
    logger: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """The member's name as a module key (no dots): its parameters' prefix in checkpoints."""
        return re.sub(r"\W", "_", self.name)

    def open_logger(self) -> None:
        if self.logger_cfg is not None and self.logger is None:
            self.logger = instantiate(self.logger_cfg, save_dir=str(self.dir), run_name=self.run_name)
            self.logger.log_hyperparams(OmegaConf.to_container(self.config, resolve=True))

    @property
    def run_name(self) -> str:
        base = self.config.run_name
        return base if self.name == "main" else f"{base}/{self.name}"

    def log(self, row: dict[str, float], step: int) -> None:
        if self.logger is not None:
            self.logger.log_metrics(row, step=step)

    def close_logger(self, summary: dict[str, float] | None, failed: bool = False) -> None:
        if self.logger is None:
            return
        if summary is not None and hasattr(self.logger, "experiment") and hasattr(
                self.logger.experiment, "summary"):
            self.logger.experiment.summary.update({f"final/{k}": v for k, v in summary.items()})
        self.logger.finalize("failed" if failed else "success")
        if hasattr(self.logger, "experiment") and hasattr(self.logger.experiment, "finish"):
            self.logger.experiment.finish(exit_code=1 if failed else 0)
        self.logger = None


def _member_name(overrides: dict[str, Any]) -> str:
    name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def plan_members(cfg: DictConfig, run_dir: Path) -> list[Member]:
    """The members of this run: `dictionary` alone, or one per `bank` entry (each validated)."""
    entries = [dict(e) for e in OmegaConf.to_container(cfg.bank, resolve=True)] if cfg.bank else []
    if not entries:
        return [Member("main", run_dir, build_node(cfg.dictionary, "dictionary"), cfg,
                       cfg.get("logger"))]
    members, seen = [], set()
    for i, overrides in enumerate(entries):
        name = str(overrides.pop("name", None) or _member_name(overrides))
        key = re.sub(r"\W", "_", name)
        if key in seen:
            raise ConfigError(f"bank[{i}]: member name '{name}' is used twice; give each a `name`.")
        seen.add(key)
        node = OmegaConf.merge(cfg.dictionary, overrides)
        solo = OmegaConf.merge(cfg, {"bank": []})
        solo.dictionary = node
        members.append(Member(name, run_dir / name, build_node(node, f"bank[{i}]"), solo,
                              cfg.get("logger")))
    return members
