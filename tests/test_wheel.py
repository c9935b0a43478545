"""A built wheel works without the checkout: conf/ travels inside it (setup.py), and the smoke
experiment trains from a directory that has no conf/, importing tcx from the wheel alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ONCE_IN_CI

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@ONCE_IN_CI
def test_the_smoke_experiment_runs_from_an_installed_wheel(tmp_path, cache_dir):
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    source = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("tcx", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # no build isolation: setuptools is already here, and CI must not need a network for this
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("tcx-*.whl"))
    site = tmp_path / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (site / "tcx" / "conf" / "train.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # before site-packages, where an editable tcx may be
    where = subprocess.run([sys.executable, "-c", "import tcx.config as c; print(c.__file__); print(c.CONF_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.split() == [str(site / "tcx" / "config.py"), str(site / "tcx" / "conf")], where.stderr
    run = subprocess.run([sys.executable, "-m", "tcx.cli.train", "experiment=smoke", "trainer.max_tokens=4096",
                          "trainer.eval_tokens=1024", "logger=csv", "trainer.progress_bar=false",
                          f"cache_dir={cache_dir}", "hydra.run.dir=run"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((elsewhere / "run" / "metrics.json").read_text())["tokens"] >= 4096
