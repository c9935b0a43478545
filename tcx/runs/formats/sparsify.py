"""EleutherAI sparsify folders: `<hookpoint>/cfg.json` + `<hookpoint>/sae.safetensors`, what
`SparseCoder.load_from_disk` (and `load_many`, one folder per hookpoint) reads. TopK only, and the
output width must equal the input's.

    pre = relu(x' @ encoder.weight.T + encoder.bias)     x' = x - b_dec for SAEs, x for transcoders
    z   = the k largest of pre per row
    y   = z @ W_dec + b_dec (+ x @ W_skip.T with skip_connection)

sparsify names hookpoints by the Hugging Face module (`layers.3.mlp`); tcx's exports use the
transformer-lens hook the dictionary reads, and keep both hooks in `tcx.json`. Reading a folder
sparsify trained, `layers.L.mlp` (any prefix) is the MLP's input and output at block L
(`blocks.L.mlp.hook_in` -> `blocks.L.hook_mlp_out`), `layers.L` the residual stream after it.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcx.dictionaries.base import Activation
from tcx.dictionaries.io import Units
from tcx.errors import CheckpointError
from tcx.io import save_tensors, write_json
from tcx.runs.formats.base import Format, imported, read_json, read_tensors, rebuild, sites, take, unsupported
from tcx.runs.formats.sidecar import read_sidecar, write_sidecar
from tcx.runs.record import OpenedDictionary


def hooks_of(folder: Path, transcode: bool) -> tuple[str, str]:
    """transformer-lens hooks for a sparsify hookpoint name (see the module docstring)."""
    name = folder.name
    if name.startswith("blocks."):
        return name, name
    m = re.search(r"(?:^|\.)(?:layers|h|layer)\.(\d+)(\.mlp)?$", name)
    if not m:
        raise CheckpointError(f"{folder}: sparsify hookpoint '{name}' does not name a layer tcx can place "
                              "(expected `...layers.L.mlp` or `...layers.L`).")
    layer = int(m[1])
    if m[2] and transcode:
        return f"blocks.{layer}.mlp.hook_in", f"blocks.{layer}.hook_mlp_out"
    hook = f"blocks.{layer}.hook_mlp_out" if m[2] else f"blocks.{layer}.hook_resid_post"
    return hook, hook


class Sparsify(Format):
    name = "sparsify"
    description = "EleutherAI sparsify (<hookpoint>/cfg.json + sae.safetensors)"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "cfg.json").is_file() and (path / "sae.safetensors").is_file()

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        cfg, f = read_json(path / "cfg.json"), path / "sae.safetensors"
        if cfg.get("activation", "topk") != "topk" or cfg.get("multi_topk"):
            raise CheckpointError(f"{path / 'cfg.json'}: activation {cfg.get('activation')!r} "
                                  f"(multi_topk={cfg.get('multi_topk')}) has no tcx kind; tcx reads plain topk.")
        t = read_tensors(f)
        d_in = int(cfg["d_in"])
        d_sae = int(cfg.get("num_latents") or round(d_in * cfg.get("expansion_factor", 32)))
        W_enc = take(t, "encoder.weight", (d_sae, d_in), f).T
        b_enc, W_dec = take(t, "encoder.bias", (d_sae,), f), take(t, "W_dec", (d_sae, d_in), f)
        b_dec = take(t, "b_dec", (d_in,), f)
        transcode, skip = bool(cfg.get("transcode")), bool(cfg.get("skip_connection"))
        params = {"W_enc": W_enc, "b_enc": b_enc if transcode else b_enc - b_dec @ W_enc,
                  "W_dec": W_dec, "b_dec": b_dec}
        if skip:
            params["W_skip"] = take(t, "W_skip", (d_in, d_in), f).T
        side = read_sidecar(path)
        hook_in, hook_out = ((side["input_hook"], side["target_hook"]) if "input_hook" in side
                             else hooks_of(path, transcode))
        dictionary = rebuild(Activation("topk", k=int(cfg.get("k", 32))), d_in, d_in, d_sae,
                             sites(hook_in, hook_out, side.get("model_config")), skip, path)
        return [imported(dictionary, params, source=path, fmt=self.name, input_hook=hook_in, target_hook=hook_out,
                         units=units, side=side)]

    def write(self, runs, out: Path) -> None:
        for d in runs.dictionaries:
            dic, act = d.dictionary, d.dictionary.activation()
            if act.name != "topk":
                raise unsupported(self.name, d, f"sparsify trains TopK only, this is {act.name}",
                                  "saelens, circuit-tracer (transcoders)")
            if dic.d_in != dic.d_out:
                raise unsupported(self.name, d, f"sparsify needs d_out = d_in, here {dic.d_out} vs {dic.d_in}",
                                  "saelens (SAEs)")
            folder = out / d.input_hook
            if folder.exists():
                raise unsupported(self.name, d, f"two dictionaries read {d.input_hook}; sparsify keeps one "
                                  "per hookpoint", "saelens")
            folder.mkdir(parents=True)
            b_enc = dic.b_enc if d.is_transcoder else dic.b_enc + dic.b_dec @ dic.W_enc
            tensors = {"encoder.weight": dic.W_enc.T, "encoder.bias": b_enc, "W_dec": dic.W_dec, "b_dec": dic.b_dec}
            skip = hasattr(dic, "W_skip")
            if skip:
                tensors["W_skip"] = dic.W_skip.T
            save_tensors({k: v.detach().float().contiguous() for k, v in tensors.items()}, folder / "sae.safetensors")
            write_json(folder / "cfg.json", {
                "activation": "topk", "expansion_factor": dic.d_sae / dic.d_in, "normalize_decoder": False,
                "num_latents": dic.d_sae, "k": act.k, "multi_topk": False, "skip_connection": skip,
                "transcode": d.is_transcoder, "d_in": dic.d_in})
            write_sidecar(folder, runs, d)
