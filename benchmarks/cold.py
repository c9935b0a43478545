"""Benchmarks time first runs: the evaluation baselines that earlier runs kept in
<cache_dir>/baselines/ (tcx/evaluation/baselines.py) are put aside for the benchmark and back after."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

CACHE = Path(os.environ.get("TCX_CACHE_DIR", "~/.cache/tcx")).expanduser()
KEPT, ASIDE = CACHE / "baselines", CACHE / "baselines.kept-aside-by-benchmark"


def forget_baselines() -> None:
    """What the next run finds is what a first run finds."""
    shutil.rmtree(KEPT, ignore_errors=True)


@contextlib.contextmanager
def baselines_aside() -> Iterator[None]:
    if KEPT.exists() and not ASIDE.exists():
        KEPT.rename(ASIDE)
    try:
        yield
    finally:
        forget_baselines()
        if ASIDE.exists():
            ASIDE.rename(KEPT)
