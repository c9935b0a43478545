"""Structured configs: the schema Hydra validates at compose time, and the builder for group nodes.

Every node of `conf/` is typed by a dataclass, so a misspelt key or a wrong type fails at compose
time with the key's name:

* The primary configs (`conf/train.yaml`, ...) and the `trainer` group by `TrainConfig`,
  `TrainerConfig` and their siblings below, registered in Hydra's ConfigStore.
* The `model`, `data`, `dictionary` and `target` groups by the config dataclass each option names with
  `_target_`: `register_configs` stores every such dataclass as `schema/<group>/<ClassName>`, and
  the option's YAML extends it through its defaults list (`/schema/dictionary@_here_: ReLUConfig`).
  A new kind is one module plus one YAML: the schema is found by walking the group's package, with
  no registry to edit. A YAML outside tcx may leave the line out; its node is then open until
  `build_node` checks it against its dataclass (unknown keys, types, `__post_init__` rules) before
  any work starts, and reports the offending key under its full path (`dictionary.l1_coeff`).

Hydra's `+key=` adds a key even to a typed node: such a key is refused before any work by
`refuse_unknown_keys`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from tcx.errors import CheckpointError, ConfigError

_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"   # a wheel carries conf/ inside the package
CONF_DIR = str(_PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[1] / "conf")
"""The Hydra config root: the repository's conf/ (a checkout or an editable install), or the copy
a built wheel ships as tcx/conf (setup.py puts it there)."""

T = TypeVar("T")


PROFILERS = (None, "simple", "advanced", "pytorch")
"""`trainer.profiler`'s values: Lightning's (its `xla` is for TPUs)."""


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainerConfig:
    """How long and how fast to train; everything about the optimisation loop except the lr."""

    max_tokens: int = 2_000_000
    """Training tokens (activation rows) seen by every dictionary."""
    batch_size: int = 1024
    """Activation rows per optimiser step (global, across processes)."""
    buffer_tokens: int = 65_536
    """Activations are shuffled within chunks of this many tokens (rounded up to whole batches)."""
    model_batch_size: int = 32
    """Context windows per forward pass of the language model."""
    lr_warmup_steps: int = 100
    lr_decay_fraction: float = 0.2
    """Final fraction of steps over which the lr decays linearly to zero."""
    sparsity_warmup_fraction: float = 0.05
    """Fraction of steps over which the sparsity penalty ramps from 0 to its full coefficient."""
    dead_window_tokens: int = 1_000_000
    """A feature that has not fired in this many tokens counts as dead."""
    auxk: bool = True
    """AuxK loss for the TopK family's dead latents."""
    auxk_window_tokens: int = 65_536
    """AuxK's dead latents: those that have not fired in this many tokens. Shorter than the reported
    dead window: latents lost early in training are caught while the run can still use them."""
    resample_every_n_tokens: int = 0
    """Restart the dead features of penalty kinds (ReLU, gated, JumpReLU) this often (0: never)."""
    checkpoint_every_n_steps: int = 200
    log_every_n_steps: int = 10
    metrics_window_steps: int = 20
    """Training-window metrics (train_* in metrics.json) average the last this many steps."""
    eval_tokens: int = 32_768
    """Held-out tokens for the evaluation at the end of training (0: none)."""
    eval_every_n_tokens: int = 0
    """Also evaluate on held-out tokens every this many training tokens (0: only at the end)."""
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    model_dtype: str = "float32"
    """dtype of the language model's forward pass (bfloat16 on a GPU halves its cost)."""
    compile: str | None = None
    """Compile each dictionary's training step whole (`torch.compile`, fullgraph) in this mode:
    `default` (fused kernels), `reduce-overhead` (on a GPU also captured as CUDA graphs: one launch
    where an eager step makes dozens), `max-autotune`; null: eager. The compiled step is the dense
    one, which reads nothing back to the host. On a CPU the sparse step, which compiling rules out,
    is the faster one (README, "Speed")."""
    progress_bar: bool = True
    activation_cache: bool = False
    """Read the model's activations from `<cache_dir>/activations/` (written by `tcx-cache`, or by
    the first run with this on) instead of running the model: same weights, bit for bit."""
    profiler: str | None = None
    """Lightning's profiler, `simple` or `advanced`: where the time went (model forward inside
    `train_dataloader_next`, dictionary step, callbacks' evaluation), printed when the run ends;
    `pytorch`: torch's operator table, and a trace of the steps in the run dir (chrome://tracing)."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "batch_size", "buffer_tokens", "model_batch_size",
                     "checkpoint_every_n_steps", "log_every_n_steps", "metrics_window_steps",
                     "dead_window_tokens", "auxk_window_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"trainer.{name} must be positive, got {getattr(self, name)}.")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ConfigError(f"trainer.compile must be null or one of {', '.join(COMPILE_MODES)} "
                              f"(torch.compile's modes), got {self.compile!r}.")
        if self.eval_tokens < 0 or self.eval_every_n_tokens < 0:
            raise ConfigError("trainer.eval_tokens and trainer.eval_every_n_tokens must be >= 0.")
        if self.max_tokens < self.batch_size:
            raise ConfigError(f"trainer.max_tokens ({self.max_tokens}) is smaller than one batch "
                              f"(trainer.batch_size={self.batch_size}).")
        if self.profiler not in PROFILERS:
            raise ConfigError(f"trainer.profiler must be null, simple, advanced or pytorch, got '{self.profiler}'.")
        for name in ("lr_decay_fraction", "sparsity_warmup_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"trainer.{name} must lie in [0, 1], got {getattr(self, name)}.")

    @property
    def max_steps(self) -> int:
        return self.max_tokens // self.batch_size


@dataclass
class TrainConfig:
    """The primary config of `tcx-train`."""

    model: Any = MISSING
    layer: int = MISSING
    dictionary: Any = MISSING
    bank: list[Any] = field(default_factory=list)
    """Extra members trained beside each other from one pass of the model: each entry overrides
    keys of `dictionary` (and may carry a `name`). Empty: train `dictionary` alone."""
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    """Lightning callbacks beside the run's own, by name (conf/callbacks/): null switches one off."""
    optimizer: Any = MISSING
    lr: float = 1e-3
    seed: int = 0
    resume: bool = True
    """Resume from `<run dir>/checkpoints/last.ckpt` if there is one; false starts afresh, moving the
    old run (checkpoints, logs, outputs) aside to `<run dir>/old-<time>/`."""
    cache_dir: str = MISSING
    """Where tokenised corpora are cached between runs."""
    run_name: str = MISSING
    experiment: str | None = None
    """The conf/experiment/ chosen, which its YAML records: a bank member naming another kind
    composes that kind with the same experiment (and its conf/tuning/), as a solo run would."""
    group: str | None = None
    """Groups runs in W&B (tcx-sweep sets it to the sweep's name)."""
    tags: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    """The primary config of `tcx-eval`."""

    run: str | None = None
    """A run dir, member dir, sweep dir, or a folder in another tool's format (SAELens, ...)."""
    dictionaries: list[str] = field(default_factory=list)
    """Several of those, spliced into the model together."""
    max_tokens: int = 32_768
    """Held-out tokens to evaluate on."""
    batch_windows: int = 16
    dense_threshold: float = 0.1
    """A feature firing on more than this fraction of tokens counts as dense."""
    out_dir: str | None = None
    """Write everything here (eval_<name>.json, the joint numbers), leaving the runs' own eval.json
    and metrics.json as they are: a quick check that replaces nothing. Default: a tcx run's own
    folder (and its metrics.json); beside another tool's folder; the joint numbers beside the first."""
    plots: bool = True
    model: Any = None
    """`model=<conf/model option>` (its node, composed like tcx-train's), for folders from other
    tools that do not name a model tcx knows; from Python, the option's name."""

    def __post_init__(self) -> None:  # max_tokens=0 replaced a run's held-out numbers with 63 tokens' worth
        for key in ("max_tokens", "batch_windows"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be at least 1")
        if not 0.0 < self.dense_threshold <= 1.0:
            raise ValueError(f"dense_threshold={self.dense_threshold} must lie in (0, 1]")


SCHEMA_GROUPS = {"model": "tcx.models.spec.ModelSpec", "data": "tcx.data.corpus.Corpus",
                 "dictionary": "tcx.dictionaries.base.DictionaryConfig",
                 "target": "tcx.circuits.targets.base.TargetConfig"}
"""The groups whose options name their config dataclass with `_target_`, and the base class of
those dataclasses: each of its subclasses is stored as `schema/<group>/<ClassName>`."""


def kinds(base: str) -> list[type]:
    """Every dataclass deriving from `base` in its package (each module imported), and any other
    imported already."""
    root = get_class(base)
    package = root.__module__.rsplit(".", 1)[0]
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{module.name}")
    found, todo = [], list(root.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if dataclasses.is_dataclass(cls) and cls not in found:
            found.append(cls)
    return found


def target_path(cls: type) -> str:
    """What a `_target_` names `cls` by."""
    return f"{cls.__module__}.{cls.__qualname__}"


def schema(cls: type) -> DictConfig:
    """`cls` as a typed node that also holds the `_target_` naming it."""
    node = OmegaConf.structured(cls)
    with open_dict(node):
        node["_target_"] = target_path(cls)
    return node


@functools.cache
def _group_schemas() -> list[tuple[str, str, DictConfig]]:
    """(group, name, node) of every group schema: built once a process (compose_train registers the
    configs again on every call)."""
    return [(f"schema/{group}", cls.__name__, schema(cls)) for group, base in SCHEMA_GROUPS.items()
            for cls in kinds(base)]


def node_of(config: Any) -> dict[str, Any]:
    """A config dataclass (what `build_node` returns) as the `_target_` node that builds it again."""
    return {"_target_": target_path(type(config)),
            **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    for group, name, node in _group_schemas():
        cs.store(group=group, name=name, node=node)
    from tcx.circuits.config import CircuitConfig, QualityConfig

    cs.store(name="circuit_schema", node=CircuitConfig)
    cs.store(name="quality_schema", node=QualityConfig)
    from tcx.features.config import FeaturesConfig, StudyConfig

    cs.store(name="features_schema", node=FeaturesConfig)
    cs.store(name="study_schema", node=StudyConfig)


def refuse_unknown_keys(node: DictConfig, key: str = "") -> None:
    """Hydra's `+key=value` adds a key even to a typed node, where nothing reads it: a misspelt
    setting (`+trainer.max_tokenz=5`) would be dropped without a word. Refuse it, naming the field
    meant. (A group node typed by no schema is checked by `build_node`.)"""
    cls = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(cls):
        return
    fields = [f.name for f in dataclasses.fields(cls)]
    for name in node:
        if name == "_target_":  # the dataclass a group node names (`schema`)
            continue
        path = f"{key}.{name}" if key else str(name)
        if name not in fields:
            near = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"did you mean `{path.rsplit('.', 1)[0] + '.' if '.' in path else ''}{near[0]}`? " if near else ""
            raise ConfigError(f"{path}: no such setting ({hint}a leading `+` added it, and nothing would have "
                              f"read it). The settings here are: {', '.join(fields)}.")
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            refuse_unknown_keys(child, path)


def build_node(node: DictConfig | dict, key: str, **extra: Any) -> Any:
    """Validate a `_target_` node against its config dataclass and return the instance.

    `key` is the node's path in the whole config, used in error messages.
    """
    node = OmegaConf.create(node) if isinstance(node, dict) else node
    if node is None or "_target_" not in node:
        raise ConfigError(f"{key} has no `_target_`: every {key.split('.')[0]} config names the "
                          "dataclass it configures (see conf/ for examples).")
    target = node["_target_"]
    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001 - hydra raises several types for a bad path
        raise ConfigError(f"{key}._target_: cannot import '{target}' ({e}).") from None
    values = OmegaConf.to_container(node, resolve=True)
    values.pop("_target_")
    values.update(extra)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        where = f"{key}.{e.full_key}" if getattr(e, "full_key", None) else key
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None
    except ConfigError as e:  # __post_init__ messages start with the field's name
        raise ConfigError(f"{key}.{e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None


def load_config(path: Path | None, text: str | None = None, where: str | None = None) -> DictConfig:
    """A saved run config, from `path` or from `text` (read from `where`); a damaged one is named."""
    try:
        loaded = OmegaConf.load(path) if path is not None else OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path or where} holds no readable config ({str(e).splitlines()[0]}). It was "
                              "left as it was; restore it, or move it aside.") from None
    if not isinstance(loaded, DictConfig):
        raise CheckpointError(f"{path or where} holds no config (a YAML mapping). It was left as it was; restore "
                              "it, or move it aside.")
    return loaded


def compose_train(overrides: list[str]) -> DictConfig:
    """`conf/train.yaml` composed with `overrides` (inside a running Hydra app or not): the
    defaults a run would get, e.g. the model node of `model=gpt2-small`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()

    def load() -> DictConfig:
        try:
            return compose(config_name="train", overrides=overrides)
        except Exception as e:  # noqa: BLE001 - hydra's own message lists the options
            raise ConfigError(f"{' '.join(overrides) or 'train.yaml'}: {str(e).splitlines()[0]}") from None

    if GlobalHydra.instance().is_initialized():
        return load()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return load()
