"""Feature-density histogram: how often each feature fires, on a log scale (dead ones counted aside)."""

from __future__ import annotations

from pathlib import Path

import torch

from tcx.io import atomic_path


def density_histogram(frequency: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alive = frequency[frequency > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if len(alive):
        ax.hist(torch.log10(alive).numpy(), bins=50, color="#3b6ea5")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("features")
    ax.set_title(f"{title}\n{int((frequency == 0).sum())} of {len(frequency)} never fired", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
