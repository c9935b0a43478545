"""What every tcx Hydra app shares: where conf/ is, and how user errors are reported."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from tcx.errors import TcxError

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def report_errors(fn: Callable) -> Callable:
    """A `TcxError` becomes its one-paragraph message on stderr and exit status 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TcxError as e:
            logging.getLogger("tcx").debug("error", exc_info=True)
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
