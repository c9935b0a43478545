"""SAELens 6.x folders: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`, log10
firing frequency), what `SAE.load_from_disk` reads.

    standard / transcoder:     z = relu(x @ W_enc + b_enc)                 W_enc [d_in, d_sae]
    topk:                      z = the k largest of relu(pre) per row
    jumprelu(_transcoder):     z = relu(pre) · 1[pre > threshold]          threshold raw, not log
    gated:                     1[x @ W_enc + b_gate > 0] · relu(x @ (W_enc·e^r_mag) + b_mag)
    skip_transcoder:           + x @ W_skip.T                              W_skip [d_out, d_in]
    y = z @ W_dec + b_dec

tcx writes `apply_b_dec_to_input: false` and `normalize_activations: "none"` (the scales are folded
in: model units), hooks in `metadata.hook_name` / `hook_name_out`, and `metadata.sae_lens_version`
6.x (an older or missing version makes SAELens rewrite the config and drop the metadata). SAELens has
no TopK transcoder, and its skip transcoder is ReLU: tcx's TopK transcoders go to sparsify instead.
"""

from __future__ import annotations

from pathlib import Path

from tcx.dictionaries.base import Activation
from tcx.dictionaries.io import Units
from tcx.errors import CheckpointError
from tcx.io import save_tensors, write_json
from tcx.runs.formats.base import (
    Format,
    imported,
    jumprelu_params,
    read_json,
    read_tensors,
    rebuild,
    sites,
    take,
    unsupported,
)
from tcx.runs.formats.sidecar import model_name, read_sidecar, write_sidecar
from tcx.runs.record import OpenedDictionary

SAE_LENS_VERSION = "6.0.0"
ACTIVATIONS = {"standard": "relu", "transcoder": "relu", "topk": "topk", "jumprelu": "jumprelu",
               "jumprelu_transcoder": "jumprelu", "gated": "gated"}
"""SAELens architecture -> the activation it applies (see the module docstring)."""


def architecture(d: OpenedDictionary, act: Activation) -> str:
    if act.name == "topk" and d.is_transcoder:
        raise unsupported("saelens", d, "SAELens has no TopK transcoder", "sparsify (d_in = d_out)")
    if act.name == "gated" and d.is_transcoder:
        raise unsupported("saelens", d, "SAELens's gated architecture is an SAE only", "tcx")
    if hasattr(d.dictionary, "W_skip"):
        raise unsupported("saelens", d, "SAELens's skip_transcoder is ReLU, this one TopK", "sparsify")
    names = {("relu", False): "standard", ("relu", True): "transcoder", ("topk", False): "topk",
             ("jumprelu", False): "jumprelu", ("jumprelu", True): "jumprelu_transcoder",
             ("gated", False): "gated"}
    return names[act.name, d.is_transcoder]


class SAELens(Format):
    name = "saelens"
    description = "SAELens 6.x (cfg.json + sae_weights.safetensors)"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()

    def read(self, path: Path, units: Units = "model") -> list[OpenedDictionary]:
        cfg = read_json(path / "cfg.json")
        arch = cfg.get("architecture", "standard")
        if arch == "skip_transcoder" or arch not in ACTIVATIONS:
            raise CheckpointError(f"{path / 'cfg.json'}: SAELens architecture '{arch}' has no tcx kind "
                                  f"(tcx reads {sorted(ACTIVATIONS)}).")
        if cfg.get("normalize_activations", "none") not in ("none", None):
            raise CheckpointError(f"{path / 'cfg.json'}: normalize_activations="
                                  f"{cfg['normalize_activations']!r} is applied at run time by SAELens; tcx "
                                  "reads only 'none' (scales folded into the weights).")
        meta = cfg.get("metadata") or {}
        version = str(meta.get("sae_lens_version") or cfg.get("sae_lens_version") or "0")
        if int(version.split(".")[0]) < 6:  # pre-6 configs keep their fields at the top level
            meta = {**cfg, **meta}
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        d_out = int(cfg.get("d_out") or d_in)
        t, f = read_tensors(path / "sae_weights.safetensors"), path / "sae_weights.safetensors"
        W_enc, W_dec = take(t, "W_enc", (d_in, d_sae), f), take(t, "W_dec", (d_sae, d_out), f)
        b_dec = take(t, "b_dec", (d_out,), f)
        gated = arch == "gated"
        b_enc = take(t, "b_gate" if gated else "b_enc", (d_sae,), f)
        params = {"W_dec": W_dec, "b_dec": b_dec}
        if gated:
            r_mag, b_mag = take(t, "r_mag", (d_sae,), f), take(t, "b_mag", (d_sae,), f)
        if cfg.get("apply_b_dec_to_input", not arch.endswith("transcoder")):  # (x - b_dec) @ W: into the biases
            if gated:
                b_mag = b_mag - b_dec @ (W_enc * r_mag.exp())
            b_enc = b_enc - b_dec @ W_enc
        if cfg.get("rescale_acts_by_decoder_norm"):  # pre·‖W_dec,i‖ ranked, z/‖W_dec,i‖ decoded
            norms = W_dec.norm(dim=1)
            W_enc, b_enc, params["W_dec"] = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        params.update(W_enc=W_enc, b_enc=b_enc, **({"r_mag": r_mag, "b_mag": b_mag} if gated else {}))
        act = Activation(ACTIVATIONS[arch], k=cfg.get("k"),
                         threshold=take(t, "threshold", (d_sae,), f) if "jumprelu" in arch else None)
        params.update(jumprelu_params(act))
        extra = set(t) - {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "b_gate", "r_mag", "b_mag"}
        if extra:
            raise CheckpointError(f"{f}: tensors {sorted(extra)} are not part of SAELens's '{arch}'.")
        hook_in = meta.get("hook_name") or ""
        hook_out = meta.get("hook_name_out") or hook_in
        side = read_sidecar(path)
        dictionary = rebuild(act, d_in, d_out, d_sae, sites(hook_in, hook_out, side.get("model_config")), False, path)
        return [imported(dictionary, params, source=path, fmt=self.name, input_hook=hook_in, target_hook=hook_out,
                         units=units, model=meta.get("model_name"), side=side)]

    def write(self, runs, out: Path) -> None:
        from tcx.runs.open import firing_frequency

        frequencies = firing_frequency(runs, 32_768)
        for d, freq in zip(runs.dictionaries, frequencies, strict=True):
            folder = out if len(runs.dictionaries) == 1 else out / d.name
            folder.mkdir(parents=True, exist_ok=True)
            act = d.dictionary.activation()
            arch = architecture(d, act)
            dic = d.dictionary
            tensors = {"W_enc": dic.W_enc, "W_dec": dic.W_dec, "b_dec": dic.b_dec}
            if arch == "gated":
                tensors.update(b_gate=dic.b_enc, r_mag=dic.r_mag, b_mag=dic.b_mag)
            else:
                tensors["b_enc"] = dic.b_enc
            if act.threshold is not None:
                tensors["threshold"] = act.threshold
            save_tensors({k: v.detach().float().contiguous() for k, v in tensors.items()},
                         folder / "sae_weights.safetensors")
            save_tensors({"sparsity": freq.clamp_min(1e-10).log10().float()}, folder / "sparsity.safetensors")
            metadata = {"sae_lens_version": SAE_LENS_VERSION, "model_name": model_name(runs),
                        "hook_name": d.input_hook, "context_size": runs.spec.ctx_len,
                        "prepend_bos": runs.spec.prefix_token is not None}
            if d.is_transcoder:
                metadata["hook_name_out"] = d.target_hook
            cfg = {"architecture": arch, "d_in": dic.d_in, "d_sae": dic.d_sae, "dtype": "float32", "device": "cpu",
                   "apply_b_dec_to_input": False, "normalize_activations": "none", "metadata": metadata}
            if d.is_transcoder:
                cfg["d_out"] = dic.d_out
            if act.k is not None:
                cfg.update(k=act.k, rescale_acts_by_decoder_norm=False)
            write_json(folder / "cfg.json", cfg)
            write_sidecar(folder, runs, d)

