"""Logger factories for `conf/logger/*.yaml`: each takes the member's folder and run name."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, WandbLogger


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
    """Metrics to `<member dir>/logs/metrics.csv`: no account, no network."""
    return CSVLogger(save_dir=save_dir, name="logs", version="")
