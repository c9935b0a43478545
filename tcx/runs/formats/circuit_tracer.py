"""circuit-tracer transcoder sets: `config.yaml` + `layer_{i}.safetensors`, one ReLU or JumpReLU
transcoder per layer, contiguous from 0 and covering every layer of the model (its replacement model
runs them all). What `circuit_tracer.utils.hf_utils.load_transcoder_from_hub(<absolute folder>)`
and `ReplacementModel.from_pretrained(model, <folder>)` read.

    z = act(x @ W_enc.T + b_enc)      W_enc [d_sae, d_model]   act: relu, or JumpReLU with
    y = z @ W_dec + b_dec (+ x @ W_skip.T)                      `activation_function.threshold`

Hooks are relative to the block (`feature_input_hook: ln2.hook_normalized`), the same at every layer.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tcx.dictionaries.base import Activation
from tcx.dictionaries.io import Units
from tcx.errors import CheckpointError
from tcx.io import save_tensors, write_text
from tcx.runs.formats.base import (
    Format,
    imported,
    jumprelu_params,
    read_tensors,
    rebuild,
    sites,
    take,
    unsupported,
)
from tcx.runs.formats.sidecar import model_name, read_sidecar, write_sidecar
from tcx.runs.record import OpenedDictionary

THRESHOLD = "activation_function.threshold"


def relative(hook: str, layer: int) -> str:
    return hook.removeprefix(f"blocks.{layer}.")


class CircuitTracer(Format):
    name = "circuit-tracer"
    description = "circuit-tracer transcoder set (config.yaml + layer_{i}.safetensors)"

    def detect(self, path: Path) -> bool:
        if not (path.is_dir() and (path / "config.yaml").is_file() and any(path.glob("layer_*.safetensors"))):
            return False
        try:
            return (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("model_kind") == "transcoder_set"
        except yaml.YAMLError:
            return False

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        for key in ("feature_input_hook", "feature_output_hook"):
            if key not in cfg:
                raise CheckpointError(f"{path / 'config.yaml'}: `{key}` is missing.")
        side = read_sidecar(path)
        model_config = side.get("model_config")
        out = []
        files = sorted(path.glob("layer_*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
        for f in files:
            layer = int(re.findall(r"\d+", f.name)[0])
            t = read_tensors(f)
            if "b_enc" not in t or "b_dec" not in t:
                raise CheckpointError(f"{f}: tensors b_enc and b_dec are needed (found {sorted(t)}).")
            d_sae, d_model = t["b_enc"].shape[0], t["b_dec"].shape[0]
            threshold = take(t, THRESHOLD, (d_sae,), f) if THRESHOLD in t else None
            act = Activation("jumprelu" if threshold is not None else "relu", threshold=threshold)
            hook_in = f"blocks.{layer}.{cfg['feature_input_hook']}"
            hook_out = f"blocks.{layer}.{cfg['feature_output_hook']}"
            params = {"W_enc": take(t, "W_enc", (d_sae, d_model), f).T, "b_enc": t["b_enc"].float(),
                      "W_dec": take(t, "W_dec", (d_sae, d_model), f), "b_dec": t["b_dec"].float(),
                      **jumprelu_params(act)}
            if "W_skip" in t:
                raise CheckpointError(f"{f}: a {act.name} transcoder with W_skip has no tcx kind (tcx's "
                                      "skip_transcoder is TopK).")
            dictionary = rebuild(act, d_model, d_model, d_sae, sites(hook_in, hook_out, model_config), False, f)
            out.append(imported(dictionary, params, source=path, fmt=self.name, input_hook=hook_in,
                                target_hook=hook_out, units=units, model=cfg.get("model_name"), side=side))
        return out

    def write(self, runs, out: Path) -> None:
        by_layer: dict[int, OpenedDictionary] = {}
        for d in runs.dictionaries:
            act = d.dictionary.activation()
            if not d.is_transcoder or act.name not in ("relu", "jumprelu") or hasattr(d.dictionary, "W_skip"):
                raise unsupported(self.name, d, "circuit-tracer sets hold ReLU or JumpReLU transcoders",
                                  "saelens, sparsify")
            if d.dictionary.d_in != d.dictionary.d_out:
                raise unsupported(self.name, d, "circuit-tracer needs d_in = d_out", "saelens")
            if d.layer in by_layer:
                raise unsupported(self.name, d, f"layer {d.layer} has two transcoders "
                                  f"({by_layer[d.layer].source})", "saelens")
            by_layer[d.layer] = d
        missing = sorted(set(range(runs.spec.n_layers)) - set(by_layer))
        if missing:
            raise CheckpointError(f"format=circuit-tracer needs a transcoder at every layer of {runs.spec.name} "
                                  f"(0..{runs.spec.n_layers - 1}); layers {missing} have none. Train them "
                                  "(sweeps/all-layers.yaml) or export to saelens.")
        hooks = {(relative(d.input_hook, i), relative(d.target_hook, i)) for i, d in by_layer.items()}
        if len(hooks) > 1:
            raise CheckpointError(f"format=circuit-tracer needs the same hooks at every layer; found {sorted(hooks)}.")
        (hook_in, hook_out), = hooks
        for layer, d in sorted(by_layer.items()):
            dic, act = d.dictionary, d.dictionary.activation()
            tensors = {"W_enc": dic.W_enc.T, "b_enc": dic.b_enc, "W_dec": dic.W_dec, "b_dec": dic.b_dec}
            if act.threshold is not None:
                tensors[THRESHOLD] = act.threshold
            save_tensors({k: v.detach().float().contiguous() for k, v in tensors.items()},
                         out / f"layer_{layer}.safetensors")
        write_text(out / "config.yaml", yaml.safe_dump({
            "model_kind": "transcoder_set", "model_name": model_name(runs), "scan": f"tcx-{runs.spec.name}",
            "feature_input_hook": hook_in, "feature_output_hook": hook_out}, sort_keys=False))
        write_sidecar(out, runs)  # one file for the set: no per-layer hooks or kind
