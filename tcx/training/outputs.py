"""What a finished member leaves in its folder: weights, their description, metrics, config."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from tcx import metrics_file
from tcx.dictionaries.base import Dictionary
from tcx.dictionaries.io import save_dictionary
from tcx.io import write_text


def write_member_outputs(member, dictionary: Dictionary, summary: dict[str, float],
                         meta: dict[str, Any]) -> None:
    write_text(member.dir / "config.yaml", OmegaConf.to_yaml(member.config, resolve=True))
    save_dictionary(dictionary, member.dir, {**meta, "training_tokens": summary["tokens"],
                                             "input_hook": meta["hooks"][member.cfg.input_site],
                                             "target_hook": meta["hooks"][member.cfg.target_site]})
    metrics_file.write(member.dir, summary)
