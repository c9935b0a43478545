"""An opened dictionary: its weights, where it sits in the model, and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcx.dictionaries.base import Dictionary


@dataclass
class Placed:
    """A dictionary with the hookpoints it reads and writes in this model."""

    dictionary: Dictionary
    input_hook: str
    target_hook: str


@dataclass
class OpenedDictionary:
    dictionary: Dictionary
    """In model units unless opened with units='normalised'."""
    meta: dict[str, Any]
    """dictionary.json's fields: kind, config, d_in/d_out/d_sae, model, layer, input_hook,
    target_hook, training_tokens, units, ..."""
    source: Path
    """The folder (or file) it was read from."""
    format: str
    """The format it was read in: tcx, saelens, sparsify, circuit-tracer, paper."""
    model_config: dict[str, Any] | None = None
    """The model's config node (`_target_` + fields) when the source records it; else the model
    is looked up by `meta["model"]` among conf/model/."""
    data_config: dict[str, Any] | None = None
    """The corpus it was trained on, when known."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Format-specific settings a run config holds (cache_dir, model_dtype)."""

    @property
    def input_hook(self) -> str:
        return self.meta["input_hook"]

    @property
    def target_hook(self) -> str:
        return self.meta["target_hook"]

    @property
    def layer(self) -> int | None:
        return self.meta.get("layer")

    @property
    def is_transcoder(self) -> bool:
        return self.input_hook != self.target_hook

    @property
    def name(self) -> str:
        """A short name for files about it: its folder, and its layer when a source holds several."""
        stem = self.source.stem if self.source.is_file() else self.source.name
        return stem if self.owns_folder or self.layer is None else f"{stem}-L{self.layer}"

    @property
    def owns_folder(self) -> bool:
        """A tcx run dir: what is measured about it goes inside it, and into its metrics.json. Another
        tool's folder is not ours to write into."""
        return self.format == "tcx"

    @property
    def ident(self) -> str:
        """Its key in results: a run's folder, another format's name (with its layer)."""
        return str(self.source) if self.owns_folder else self.name

    def writes_into_run(self, out_dir: str | Path | None) -> bool:
        """What a tool measures goes into the run dir (and its metrics.json): a tcx run, no `out_dir`."""
        return self.owns_folder and out_dir is None

    def output_file(self, stem: str, out_dir: str | Path | None = None, suffix: str = ".json") -> Path:
        """Where a tool writes `<stem>` about it: `<run dir>/<stem>.json` for a tcx run; given an
        `out_dir`, or for another format, `<stem>_<name>.json` there (or beside its file or folder),
        leaving the run as it was."""
        if self.writes_into_run(out_dir):
            return self.source / f"{stem}{suffix}"
        return (Path(out_dir) if out_dir else self.source.parent) / f"{stem}_{self.name}{suffix}"

    def features_file(self, out_dir: str | Path | None = None, selected: bool = False) -> Path:
        """Where `tcx-features` writes this dictionary's features.json (and circuits' cards read it)."""
        return self.output_file("features", out_dir, "_selected.json" if selected else ".json")

    @property
    def placed(self) -> Placed:
        return Placed(self.dictionary.eval(), self.input_hook, self.target_hook)


def site_of(hook: str, model_config: dict[str, Any] | None, layer: int | None) -> str:
    """The model site (`mlp_in`, ...) whose template gives `hook` at `layer`, else the hook itself."""
    for site, template in ((model_config or {}).get("sites") or {}).items():
        if layer is not None and template.format(layer=layer) == hook:
            return site
    return hook
