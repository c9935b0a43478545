"""What an evaluation measures without any dictionary, computed once and kept.

The clean run, the zero- and mean-ablated runs and the means they write do not depend on the
dictionaries being evaluated, only on the model, the held-out windows and the hooks ablated. Every
periodic evaluation of a run, every point of a sweep and every later run or `tcx-eval` on the same
model and layer shares them: they are kept on disk, one small file per such key,

    <cache_dir>/baselines/<digest of BaselineKey>.pt

and an evaluation that finds its file runs the model only with its dictionaries spliced in. For an
encoder (the MiniLM default) that file also holds the clean run's output, the sentence embedding
the spliced run is compared with, so the evaluation is one forward per batch instead of the 4⅔ it
costs without (means, clean, zero-ablated, mean-ablated, spliced). A causal LM's clean next-token
distributions (windows × positions × vocab) are too large to keep, so its clean run is repeated.

The numbers are those the evaluation would compute (the same runs of the same model on the same
batches): the key holds everything they depend on, down to the device kind and torch's version.
The file is written atomically; one that cannot be read is recomputed and replaced.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from tcx.digest import key_digest, tensors_digest
from tcx.errors import OutOfSpaceError
from tcx.io import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class BaselineKey:
    model: str
    settings: str
    """sha256 of the model spec's settings (`ModelSpec.settings_digest`)."""
    weights: str
    """sha256 of the model's parameters (so also their dtype)."""
    windows: str
    """sha256 of the held-out windows' token ids."""
    valid: tuple[int, int]
    batch_windows: int
    targets: tuple[str, ...]
    """The hooks ablated: each alone, and all together."""
    device: str
    torch: str
    format: int = FORMAT

    @classmethod
    def of(cls, lm, windows: Tensor, valid: slice, batch_windows: int, targets: list[str]) -> BaselineKey:
        return cls(model=lm.spec.name, settings=lm.spec.settings_digest(), weights=lm.weights_digest(),
                   windows=tensors_digest([windows]), valid=(valid.start, valid.stop),
                   batch_windows=batch_windows, targets=tuple(targets), device=device_name(lm.device),
                   torch=str(torch.__version__))

    def digest(self) -> str:
        return key_digest(self)


@dataclass
class Baselines:
    means: dict[str, Tensor]
    """Each target hook's mean over the held-out valid positions (what mean ablation writes)."""
    losses: dict[str, list[Tensor]] = field(default_factory=dict)
    """Variant ('clean', 'zero_ablated', 'kl_mean_ablated@<hook>', ...) -> per batch, per window."""
    clean: list[Tensor] | None = None
    """An encoder's clean output per batch [windows, d]; None for causal LMs (not kept)."""

    def add(self, name: str, per_window: Tensor) -> None:
        self.losses.setdefault(name, []).append(per_window.cpu())


def device_name(device: torch.device) -> str:
    """'cpu', or the accelerator's model (two cards' kernels need not agree to the last bit)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def path(cache_dir: str | Path, key: BaselineKey) -> Path:
    return Path(cache_dir).expanduser() / "baselines" / f"{key.digest()}.pt"


def load(cache_dir: str | Path | None, key: BaselineKey) -> Baselines | None:
    if cache_dir is None or not (file := path(cache_dir, key)).is_file():
        return None
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if saved["header"] != asdict(key):
            raise ValueError("its header names another model, held-out set or hook")
        return Baselines(saved["means"], saved["losses"], saved["clean"])
    except Exception as e:  # noqa: BLE001 - a cache: any unreadable file is recomputed
        log.warning("evaluation baselines %s not read (%s: %s); recomputing them", file, type(e).__name__,
                    (str(e).splitlines() or [""])[0])
        return None


def save(cache_dir: str | Path | None, key: BaselineKey, baselines: Baselines) -> None:
    """Best effort: a cache that cannot be written (disk full, read-only) costs the next evaluation
    its runs again, never this one its results."""
    if cache_dir is None:
        return
    try:
        with atomic_path(path(cache_dir, key)) as tmp:
            torch.save({"header": asdict(key), "means": baselines.means, "losses": baselines.losses,
                        "clean": baselines.clean}, tmp)
    except (OSError, OutOfSpaceError) as e:
        log.warning("evaluation baselines not kept in %s (%s)", path(cache_dir, key), str(e).splitlines()[0])
