"""The pictures: the sparsity-fidelity frontier with its Pareto front, and training curves."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from tcx.compare.wandb_log import find_log, read_wandb
from tcx.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points not beaten by another with lower L0 and better y, left to right."""
    front, best = [], None
    for x, y in sorted(points):
        if best is None or (y > best if higher_is_better else y < best):
            front.append((x, y))
            best = y
    return front


def frontier(rows: list[dict[str, Any]], y: str, labels: list[str], path: Path, higher: bool = True) -> bool:
    """L0 (log x) against `y`, one series per model and kind, each point labelled by what varied."""
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if isinstance(r.get("l0"), int | float) and isinstance(r.get(y), int | float) and r["l0"] > 0:
            series[f"{r.get('model')} · {r['kind']}"].append(r)
    if not series:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = plt.get_cmap("tab20").colors
    for i, (name, points) in enumerate(sorted(series.items())):
        xs, ys = [p["l0"] for p in points], [p[y] for p in points]
        marker = "s" if name.endswith("SAE") else "o"
        (line,) = ax.plot(xs, ys, marker, label=name, color=colors[i % len(colors)])
        front = pareto(list(zip(xs, ys, strict=True)), higher)
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=line.get_color(), alpha=0.6)
        for p in points:
            shown = sorted((k for k in labels if p.get(k) is not None and k != "dictionary.input_site"),
                           key=lambda k: k.startswith("dictionary.aux"))[:3]  # AuxK's keys hide TopK's k
            text = ", ".join(f"{k.removeprefix('dictionary.')}={p[k]}" for k in shown)
            if text:
                ax.annotate(text, (p["l0"], p[y]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active features per token)")
    ax.set_ylabel(y)
    ax.set_title(f"sparsity against {y}", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.subplots_adjust(left=0.08, right=0.72, bottom=0.12)
    _save(fig, path)
    return True


def history(run: Path) -> list[dict[str, Any]]:
    """The run's logged training rows (those with `tokens`): logs/metrics.csv, else the W&B log."""
    if (run / "logs" / "metrics.csv").is_file():
        with open(run / "logs" / "metrics.csv") as f:
            return [row for row in csv.DictReader(f) if row.get("tokens")]
    log = find_log(run)
    return [row for row in read_wandb(log).history if "tokens" in row] if log else []


def curves(rows: list[dict[str, Any]], path: Path) -> bool:
    """Loss, L0 and FVU against tokens for every run, from its CSV log or its W&B log."""
    histories = [(Path(r["run"]).name, history(Path(r["run"]))) for r in rows]
    histories = [(n, h) for n, h in histories if h]
    if not histories:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=110)
    for name, data in histories:
        for ax, key in zip(axes, ("loss", "l0", "fvu"), strict=True):
            pts = [(float(d["tokens"]), float(d[key])) for d in data if d.get(key) not in (None, "")]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1)
    for ax, key in zip(axes, ("loss", "l0", "fvu"), strict=True):
        ax.set_xlabel("tokens")
        ax.set_title(key, fontsize=10)
        ax.set_yscale("log")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    return True
