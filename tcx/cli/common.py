"""What every tcx Hydra app shares: where conf/ is, and how user errors are reported."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tcx.config import CONF_DIR, refuse_unknown_keys  # noqa: F401 - CONF_DIR: the entry points' config root
from tcx.errors import ConfigError, TcxError
from tcx.sweeps.plan import quoted


def validated(cfg: DictConfig):
    """The config as its dataclasses; a value a `__post_init__` refuses, or a required one not given,
    is named with its key (each typed node, `model`, `target`, `prune`, ..., is checked first, so
    its message carries its key)."""
    refuse_unknown_keys(cfg)
    for key in cfg:
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(child)):
            _as_object(child, str(key))
    return _as_object(cfg)


def _as_object(node: DictConfig, key: str | None = None):
    try:
        return OmegaConf.to_object(node)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{e.full_key}: required, and not given (add {e.full_key}=...).") from None
    except ValueError as e:
        raise ConfigError(f"{key}.{e}" if key else str(e)) from None


_OVERRIDE = re.compile(r"^([+~]{0,2}[\w.@/-]+)=(.*)$", re.DOTALL)


def quote_paths(argv: list[str]) -> list[str]:
    """Quote an override's value that Hydra's grammar refuses unquoted, as typed: a member folder's
    '=' (`run=<sweep>/0/l1_coeff=0.3`), a prompt's brackets or colon (`prompt=def f(x): return x`).
    Lists, dicts and quoted values are left as they are: Hydra reads those itself."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for arg in argv:
        m = _OVERRIDE.match(arg)
        if m and m[2] and not m[2].startswith(("[", "{", "'", '"')):
            try:
                parser.parse_overrides([arg])
            except Exception:  # noqa: BLE001 - Hydra raises its own OverrideParseException
                arg = f"{m[1]}={quoted(m[2])}"
        out.append(arg)
    return out


def hydra_argv(doc: str | None, args: list[str]) -> list[str]:
    """The `sys.argv` a tool's Hydra app reads for `args` (its sub-command's name taken off): values
    Hydra would refuse quoted (`quote_paths`). On --help, which in Hydra lists config groups and keys,
    the tool's docstring, which says how it is used (its sub-commands too), is printed first."""
    if doc and any(a in ("-h", "--help") for a in args):
        print(doc.strip() + "\n")
    return [sys.argv[0], *quote_paths(args)]


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
