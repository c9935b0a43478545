"""Tests compose the real conf/ and shrink it with overrides; nothing hand-builds a config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # tcx's Triton kernels (tests/test_kernels.py) on CPU tensors
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # (sparsify's decoder would take it too: eager on CPU)

from hydra import compose, initialize_config_dir  # noqa: E402

from tcx.cli.common import CONF_DIR  # noqa: E402
from tcx.config import register_configs  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"  # no test may reach a hub
os.environ.setdefault("WANDB_MODE", "offline")
register_configs()


def _interpreter_scalars() -> None:
    """Triton's interpreter before 3.9 holds a scalar as a 1-element array and takes `int()` of it, which
    numpy 2.4 refuses: a loop bound loaded from memory (`range(start, end)`) then fails. Take `.item()`
    (as 3.9 does; a CUDA torch may pin an older triton)."""
    try:
        import triton.runtime.interpreter as interpreter
    except ImportError:
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))
    interpreter._patch_lang_tensor = patched


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_scalars()

SMOKE = ["experiment=smoke"]

ONCE_IN_CI = pytest.mark.skipif(os.environ.get("TCX_REQUIRE_PEERS") == "1",
                                reason="does not depend on the transformer-lens version: CI's first phase ran it")
"""For slow tests of what transformer-lens does not touch (packaging, DDP, training dynamics, resume,
the fault matrix): CI's second phase (transformer-lens 3.9 with the peers, TCX_REQUIRE_PEERS=1)
leaves them to the first."""


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


@pytest.fixture
def slurm():
    """A SLURM cluster that answers: skipped without one, except in CI (.ci/run starts one)."""
    from tcx.cli.sweep import slurm_answers

    if not slurm_answers():
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM tests: `scripts/slurm-local.sh up` did not leave a cluster")
        pytest.skip("no SLURM here (sinfo does not answer); scripts/slurm-local.sh up starts one")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    """Debian's headless Chromium through Playwright: skipped without it, except in CI (.ci/run installs it)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if CHROMIUM is None or sync_playwright is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: chromium and playwright are installed by .ci/run")
        pytest.skip("no chromium/playwright here")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()
