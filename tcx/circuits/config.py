"""`tcx-circuit`'s config (conf/circuit.yaml), validated at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

QUALITY_COLUMNS = ("circuit_explained", "circuit_nodes80", "circuit_replacement", "circuit_completeness",
                   "circuit_stability")
"""What `tcx-circuit quality` (quality.py) adds to a run's metrics.json, and tcx-compare shows."""
DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclass
class PruneConfig:
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    def __post_init__(self) -> None:
        for name in ("node_threshold", "edge_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")


@dataclass
class SearchConfig:
    num_iters: int = 3
    num_branches: int = 15

    def __post_init__(self) -> None:
        if self.num_iters < 1 or self.num_branches < 1:
            raise ValueError(f"num_iters and num_branches must be >= 1, got {self.num_iters}, {self.num_branches}.")


@dataclass
class GraphConfig:
    """What every attribution graph needs, whichever command builds it."""

    target: Any = None
    """`target=<conf/target option>`: logit (the default: the model's top prediction at the last
    position), logit_diff, feature or direction, its node typed by that kind's dataclass; from
    Python, a `tcx.circuits.targets` config (None: the default logit)."""
    model: Any = None
    """`model=<conf/model option>` (its node, composed like tcx-train's), for folders from other
    tools that do not name a model tcx knows; from Python, the option's name or a `ModelSpec`."""
    model_dtype: str | None = None
    """The clean run's dtype (default: what the transcoders were trained with)."""
    replay_dtype: str | None = None
    """The frozen replay's dtype (default: the model's). float64 halves the speed for exact sums."""
    replay_rtol: float = 1e-4
    """The frozen replay must reproduce the clean run's hooks within this relative difference."""
    max_feature_nodes: int = 4096
    batch_size: int = 64
    """Backward passes per batch when computing the graph's rows."""
    prune: PruneConfig = field(default_factory=PruneConfig)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_feature_nodes < 1 or self.batch_size < 1:
            raise ValueError("max_feature_nodes and batch_size must be >= 1.")
        for key in ("replay_dtype", "model_dtype"):
            if getattr(self, key) not in (None, *DTYPES):
                raise ValueError(f"{key} must be one of {DTYPES}, got '{getattr(self, key)}'.")


@dataclass
class CircuitConfig(GraphConfig):
    """The primary config of `tcx-circuit`."""

    transcoders: Any = MISSING
    """A sweep dir, run dirs, a glob, or folders in another tool's format: at most one per layer.
    Layers without one keep their real MLP (a fixed input in the graph, like an error node)."""
    prompt: str = MISSING
    search: SearchConfig = field(default_factory=SearchConfig)
    card_top: int = 8


@dataclass
class QualityConfig(GraphConfig):
    """`tcx-circuit quality`: the circuits each run makes on a fixed prompt set, and how alike the
    circuits of runs at the same layer are."""

    runs: Any = MISSING
    """Sweep dirs, run dirs or globs: each transcoder is scored alone at its layer."""
    prompts: list[str] = MISSING
    """The fixed prompt set; every run is scored on the same prompts and target."""
    max_feature_nodes: int = 512
    """Rows per graph: enough for the scores, cheap enough for a sweep."""
    context: Any = None
    """Transcoders held fixed at the other layers (e.g. an all-layers sweep); layers with neither
    keep their real MLP, which counts as unexplained."""
    share: float = 0.8
    """`circuit_nodes80`: how many feature nodes hold this share of the features' influence."""
    match_cosine: float = 0.7
    """Stability: a feature matches its nearest feature of the other run by decoder cosine, if at least this."""
    out_dir: str | None = None
    """Where circuit_quality.json/.png go (default: the Hydra run dir)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {self.share}.")
        if not -1.0 <= self.match_cosine <= 1.0:
            raise ValueError(f"match_cosine must be in [-1, 1], got {self.match_cosine}.")
