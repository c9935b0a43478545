"""Tests compose the real conf/ and shrink it with overrides; nothing hand-builds a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tcx.cli.common import CONF_DIR
from tcx.config import register_configs

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a hub
os.environ.setdefault("WANDB_MODE", "offline")
register_configs()

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One token cache for the session: the stdlib docstrings are tokenised once."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture
def make_cfg(cache_dir):
    """Compose conf/train.yaml with overrides (the smoke experiment unless `smoke=False`)."""

    def _make(*overrides: str, smoke: bool = True):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("train", overrides=[*(SMOKE if smoke else []), f"cache_dir={cache_dir}",
                                               "trainer.progress_bar=false", *overrides])

    return _make
