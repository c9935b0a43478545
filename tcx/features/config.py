"""The configs of `tcx-features` (dashboards and scores) and `tcx-features study` (the blind study)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FeaturesConfig:
    """The primary config of `tcx-features`."""

    run: str | None = None
    """A run dir, member dir, sweep dir, or a folder in another tool's format (SAELens, ...)."""
    dictionaries: list[str] = field(default_factory=list)
    """Several of those: read in the same pass of the model."""
    features: list[int] = field(default_factory=list)
    """Feature indices to write (default: all)."""
    max_tokens: int = 262_144
    """Held-out tokens to read, half for the dashboards and explanations, half to score them on."""
    batch_windows: int = 16
    top: int = 20
    """Top-activating contexts kept per feature."""
    bands: int = 10
    """Equal-width activation bands over [0, scale]; those covering [0, max] are shown (bands/2+1 to bands)."""
    per_band: int = 5
    """Contexts sampled uniformly within each band."""
    context: int = 10
    """Tokens either side of a context's position."""
    positives: int = 20
    """Firing contexts sampled per feature on the test half for the scores."""
    negatives: int = 512
    """Random test-half contexts, shared by all features (those where a feature fires anywhere are dropped for it)."""
    top_tokens: int = 10
    """Tokens listed at each end of the de-embedding and the logit effects."""
    dense_threshold: float = 0.1
    """A feature firing on more than this fraction of tokens counts as dense (the page can hide them)."""
    seed: int = 0
    out_dir: str | None = None
    """Write the pages here (features_<name>.json/.html), leaving the runs as they are. Default: a tcx
    run's own folder (and its metrics.json); beside another tool's folder."""
    model: Any = None
    """`model=<conf/model option>` (its node, composed like tcx-train's), for folders from other
    tools that do not name a model tcx knows; from Python, the option's name."""

    def __post_init__(self) -> None:
        for key in ("max_tokens", "batch_windows", "top", "bands", "per_band", "positives", "top_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be at least 1")
        if self.context < 0 or self.negatives < 0:
            raise ValueError("context and negatives must be >= 0")
        if not 0.0 < self.dense_threshold <= 1.0:
            raise ValueError(f"dense_threshold={self.dense_threshold} must lie in (0, 1]")


@dataclass
class StudyConfig:
    """The primary config of `tcx-features study`: a blind sheet over several dictionaries."""

    runs: list[str] = field(default_factory=list)
    """Dictionaries (run dirs, ...) whose features.json `tcx-features` wrote: typically a transcoder and an SAE."""
    n: int = 50
    """Live features sampled from each."""
    seed: int = 0
    contexts: int = 12
    """Contexts shown per feature: top-activating first, then band samples from the highest band down."""
    min_log_frequency: float = -4.0
    """Live: log10 firing frequency above this (the paper's cut) ..."""
    min_activating: int = 4
    """... and at least this many activating tokens seen."""
    out: str | None = None
    """The study folder (default: the Hydra run dir): sheet.html and key.json (do not open the key)."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.contexts < 1:
            raise ValueError(f"n={self.n} and contexts={self.contexts} must be at least 1")
