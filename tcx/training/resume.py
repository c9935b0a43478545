"""A resume continues the experiment it resumes: the settings that change what is trained must be
the checkpoint's own (each key that differs is named); how a step runs or what is reported may change."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tcx.config import TrainerConfig, load_config
from tcx.errors import ConfigError
from tcx.models.spec import moved_target

# Changing these between a run and its resume would silently mix two experiments.
_FIXED_ON_RESUME = ("model", "layer", "dictionary", "bank", "data", "seed", "lr", "optimizer", "trainer",
                    "callbacks.auxk", "callbacks.resample")
_HOW_NOT_WHAT = ("optimizer.fused", "optimizer.foreach", *(f"trainer.{key}" for key in (
    "model_batch_size", "checkpoint_every_n_steps", "log_every_n_steps", "metrics_window_steps",
    "eval_tokens", "eval_every_n_tokens", "accelerator", "devices", "num_nodes", "strategy", "compile",
    "progress_bar", "activation_cache", "profiler")))
"""Keys under those that change how a step is computed or what is reported, not what is trained (the
same weights, or the same up to float rounding: the fused optimiser, the model's batch, the compiled
step): a run resumes across them, on another machine or allocation too."""
_SCHEMAS = {"trainer": TrainerConfig}
"""Nodes typed by a dataclass rather than a `_target_`: a key a saved config predates is its default."""


def _leaves(value, prefix: str) -> dict[str, object]:
    if isinstance(value, dict):
        value = _typed(value, _config_class(value.get("_target_") or _SCHEMAS.get(prefix)))
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{prefix}.{key}").items()}
    if prefix.endswith("._target_") and isinstance(value, str):
        value = moved_target(value)  # run dirs from before a class moved name it by its old path
    return {prefix: value}


def _config_class(target) -> type | None:
    """The config dataclass a node names with `_target_` (or is typed by); None for anything else
    (a callback's factory, `AuxK.build`, or a class gone since: its saved keys alone are compared)."""
    if isinstance(target, str):
        module, _, name = moved_target(target).rpartition(".")
        try:
            target = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return None
    return target if dataclasses.is_dataclass(target) else None


def _typed(node: dict, cls: type | None) -> dict:
    """`node` as its config dataclass types it: a key it lacks (that its YAML leaves out, or that a
    run dir's saved config predates) is the field's default, and each value has the field's type (a
    config saved before its group was typed at compose time holds `revision: 4632170` where the field
    is a str, `expansion_factor: 8` where it is a float)."""
    if cls is None:
        return node
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(cls),
                                                       {k: v for k, v in node.items() if k in names}))
    except OmegaConfBaseException:  # a value its field's type no longer takes: compared as saved
        return node
    return {**{k: v for k, v in typed.items() if v != "???"}, **{k: v for k, v in node.items() if k not in names}}


def check_resume_config(run_dir: Path, cfg: DictConfig, trained: str | None = None) -> None:
    """Refuse to resume a checkpoint under settings that change what is trained; name each key.
    `trained`: the config the checkpoint holds (checkpoints before it hold none: the run dir's
    config.yaml then stands for it, and a run dir with neither resumes unchecked)."""
    saved_path = run_dir / "config.yaml"
    if trained is None and not saved_path.exists():
        return
    saved = load_config(saved_path if trained is None else None, trained, f"{run_dir}/checkpoints/last.ckpt")
    differ = []
    for key in _FIXED_ON_RESUME:
        if OmegaConf.select(saved, key.split(".")[0]) is None and "." in key:
            continue  # a group the saved config predates (callbacks): it ran what was built in then
        old, new = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        old = OmegaConf.to_container(old, resolve=True) if OmegaConf.is_config(old) else old
        new = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
        old_leaves, new_leaves = _leaves(old, key), _leaves(new, key)
        differ += [f"`{k}` ({old_leaves.get(k)!r}, now {new_leaves.get(k)!r})"
                   for k in sorted(set(old_leaves) | set(new_leaves))
                   if old_leaves.get(k) != new_leaves.get(k) and k not in _HOW_NOT_WHAT
                   and not (key in _SCHEMAS and k not in new_leaves)]  # a key removed since
    if differ:
        raise ConfigError(
            f"{run_dir} holds a checkpoint started with a different " + ", ".join(differ[:5])
            + (f" and {len(differ) - 5} more" if len(differ) > 5 else "") + ": resuming would mix two "
            "experiments. Use a new run dir (hydra.run.dir=...), the old values, or resume=false to start "
            "this one afresh (the old run is kept, moved to old-<time>/).")
