"""Filtering, ranking and printing runs."""

from __future__ import annotations

import csv
import io
import operator
import re
from typing import Any

from tcx.circuits.config import QUALITY_COLUMNS
from tcx.errors import ConfigError
from tcx.io import write_text

LOWER_IS_BETTER = {"l0", "fvu", "mse", "dead_fraction", "unfired_fraction", "dense_fraction", "kl",
                   "loss_spliced", "loss", "aux", "circuit_nodes80"}
"""Metrics ranked ascending; each `train_<name>` (the training window's) goes as `<name>` does."""
OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
       ">": operator.gt}
INTERPRETABILITY = ["detection", "fuzzing", "context_free"]
"""Mean automatic scores `tcx-features` adds to a run's metrics.json (higher: more interpretable;
context_free: the share of activation variance the token alone explains)."""
CIRCUITS = list(QUALITY_COLUMNS)
"""What `tcx-circuit quality` adds: circuit scores on a fixed prompt set."""
SHOWN = ["kind", "model", "layer", "l0", "fvu", "recovered_mean", "recovered_zero", "dead_fraction", "tokens"]


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float)})


def check_metric(rows: list[dict[str, Any]], name: str) -> None:
    if name not in metric_names(rows):
        raise ConfigError(f"no metric '{name}'; available: {', '.join(metric_names(rows))}.")


def keep(rows: list[dict[str, Any]], expression: str | None) -> list[dict[str, Any]]:
    """Rows satisfying e.g. `l0<=32` (several joined with `,`)."""
    if not expression:
        return rows
    for clause in expression.split(","):
        m = re.fullmatch(r"\s*([\w.]+)\s*(<=|>=|==|!=|<|>)\s*([-+\d.eE]+)\s*", clause)
        if not m:
            raise ConfigError(f"filter '{clause}' is not `<metric> <op> <number>` (ops: {', '.join(OPS)}).")
        name, op, value = m[1], OPS[m[2]], float(m[3])
        check_metric(rows, name)
        rows = [r for r in rows if has(r, name) and op(r[name], float(value))]
    return rows


def lower_is_better(name: str) -> bool:
    return name.removeprefix("train_") in LOWER_IS_BETTER


def has(row: dict[str, Any], name: str) -> bool:
    return isinstance(row.get(name), int | float)


def rank(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """Best first: ascending for metrics where lower is better, descending otherwise; runs without
    the metric (no held-out evaluation, not yet scored by tcx-features) last, in their order."""
    check_metric(rows, by)
    present = sorted((r for r in rows if has(r, by)), key=lambda r: r[by], reverse=not lower_is_better(by))
    return present + [r for r in rows if not has(r, by)]


def varied(rows: list[dict[str, Any]]) -> list[str]:
    """Config keys whose value differs between runs: what the comparison is about."""
    keys = sorted({k for r in rows for k in r if k.startswith("dictionary.") or k in ("layer", "model", "seed")})
    return [k for k in keys if len({_comparable(r.get(k)) for r in rows}) > 1]


def _comparable(value: Any) -> Any:
    """4 and 4.0 are one value (a config saved before its group was typed holds the int)."""
    return value if isinstance(value, (int, float, str, type(None))) else str(value)


def as_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table)


def write_csv(rows: list[dict[str, Any]], path) -> None:
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "run", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
