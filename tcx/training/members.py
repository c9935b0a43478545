"""Bank members: the dictionaries one run trains, each with its own folder, config and logger.

A member's folder holds exactly what a run training it alone would write, and its `config.yaml`
is that solo run's config: `dictionary` (and `layer`) replaced by the member's, `bank` empty.
Members may sit at different layers: the model then runs once, to the deepest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from tcx.config import build_node, compose_train
from tcx.dictionaries.base import DictionaryConfig
from tcx.errors import ConfigError
from tcx.run_dir import OUTPUTS, folder_name, is_member_name


def module_key(name: str) -> str:
    """A member's name as a module key (no dots): its parameters' prefix in checkpoints."""
    return re.sub(r"\W", "_", name)


@dataclass
class Member:
    name: str
    dir: Path
    cfg: DictionaryConfig
    config: DictConfig
    """The full config of a solo run of this member."""
    input_hook: str
    """The hookpoint it reads (its input site at its layer); batches are keyed by hookpoint."""
    target_hook: str
    logger: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return module_key(self.name)

    @property
    def layer(self) -> int:
        return int(self.config.layer)

    def open_logger(self) -> None:
        if self.config.get("logger") is not None and self.logger is None:
            self.logger = instantiate(self.config.logger, save_dir=str(self.dir), run_name=self.run_name)
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
    return folder_name(",".join(f"{k}={v}" for k, v in overrides.items()) or "base")


def group_option(group: str, name: str, experiment: str | None = None) -> DictConfig:
    """A config group option (conf/<group>/<name>.yaml, or one on hydra.searchpath) as a node, as
    the run's experiment (and its tuning for that option) sets it."""
    try:
        return compose_train([f"{group}={name}", *([f"experiment={experiment}"] if experiment else [])])[group]
    except ConfigError as e:
        raise ConfigError(f"bank: {e}") from None


def experiment_of(cfg: DictConfig) -> str | None:
    """The experiment the run composed: its YAML records its name (`experiment: smoke`); one that does
    not is found in Hydra's choices when running under Hydra."""
    if cfg.get("experiment"):
        return cfg.experiment
    from hydra.core.hydra_config import HydraConfig

    chosen = HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None
    return None if chosen in (None, "null") else chosen


def plan_members(cfg: DictConfig, run_dir: Path) -> tuple[list[Member], dict[Path, str]]:
    """The members of this run: `dictionary` alone, or one per `bank` entry (each validated).

    An entry overrides keys of `dictionary`, or, with `dictionary: <kind>`, of that group option
    under the run's experiment (what `dictionary=<kind> experiment=<it>` would give); `layer: N`
    puts it at another layer than the run's.
    In a bank of several, a member with an impossible value is returned among the failures
    (folder -> error) so the others still train; alone, it raises.
    """
    spec = build_node(cfg.model, "model")

    def member(name: str, directory: Path, dcfg: DictionaryConfig, config: DictConfig) -> Member:
        spec.check_layer(config.layer)
        return Member(name, directory, dcfg, config, spec.hook(dcfg.input_site, config.layer),
                      spec.hook(dcfg.target_site, config.layer))

    entries = [dict(e) for e in OmegaConf.to_container(cfg.bank, resolve=True)] if cfg.bank else []
    if not entries:
        return [member("main", run_dir, build_node(cfg.dictionary, "dictionary"), cfg)], {}
    members, failures, seen = [], {}, set()
    for i, overrides in enumerate(entries):
        name = str(overrides.pop("name", None) or _member_name(overrides))
        if not is_member_name(name):
            raise ConfigError(f"bank[{i}].name '{name}' cannot be a member's folder in the run dir: use "
                              "letters, digits and _ . , = + - (not starting with '.' or 'old-'), and "
                              f"none of the run's own names ({', '.join(OUTPUTS)}).")
        key = module_key(name)
        if key in seen:
            raise ConfigError(f"bank[{i}]: member name '{name}' is used twice; give each a `name`.")
        seen.add(key)
        try:
            kind, layer = overrides.pop("dictionary", None), overrides.pop("layer", cfg.layer)
            if not isinstance(layer, int) or isinstance(layer, bool):
                raise ConfigError(f"bank[{i}] ('{name}'): layer must be an integer, got {layer!r}.")
            base = group_option("dictionary", kind, experiment_of(cfg)) if kind else cfg.dictionary
            known = [f.name for f in fields(get_class(base["_target_"]))]
            unknown = sorted(set(overrides) - set(known))
            if unknown:
                raise ConfigError(f"bank[{i}] ('{name}'): {', '.join(unknown)} is not a field of "
                                  f"{base['_target_'].rsplit('.', 1)[-1]}; its fields: {', '.join(known)}.")
            # unlocked: a field its YAML leaves to the dataclass default (normalize) may be set too
            node = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(base)), overrides)
            solo = OmegaConf.merge(cfg, {"bank": [], "tags": [*cfg.tags, name], "layer": layer})
            solo.dictionary = node
            members.append(member(name, run_dir / name, build_node(node, f"bank[{i}]"), solo))
        except ConfigError as e:
            if len(entries) == 1:
                raise
            failures[run_dir / name] = str(e)
    if not members:
        raise ConfigError("every member of the bank is invalid: " + "; ".join(failures.values()))
    return members, failures
