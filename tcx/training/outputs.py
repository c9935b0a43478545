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
    hooks = {member.cfg.input_site: member.input_hook, member.cfg.target_site: member.target_hook}
    save_dictionary(dictionary, member.dir, {**meta, "layer": member.layer, "hooks": hooks,
                                             "training_tokens": summary["tokens"],
                                             "input_hook": member.input_hook, "target_hook": member.target_hook})
    metrics_file.write(member.dir, summary)
