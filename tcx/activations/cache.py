"""`ActivationCache`: the stream's chunks on disk, written once, read by every later run.

A chunk of the activation stream is a pure function of what `StreamKey` names (model, hookpoint,
training windows, seed, chunk size, ...), so a chunk computed by one run is exactly the chunk any
other run with the same key would compute: a run that reads it trains bit-identical weights to one
that runs the model (on the machine kind that wrote it). Each site is stored apart, one file per
chunk, so runs that need a subset of a cache's sites (an SAE of a transcoder's sweep) share it:

    <cache_dir>/activations/<digest of the key without the hook>/<hookpoint>/<chunk>.pt

Every shard carries its whole key in its header; a shard whose key differs from the run's (copied
from another cache, or written by another model, layer, corpus or tokenizer) is an error, never
silently read. Shards are written atomically, so a killed run leaves none half-written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from tcx.digest import key_digest
from tcx.errors import TcxError
from tcx.io import atomic_path

FORMAT = 1


class ActivationCacheError(TcxError):
    pass


@dataclass(frozen=True)
class StreamKey:
    """Everything a chunk's content depends on, but the hookpoint."""

    model: str
    settings: str
    """sha256 of the model spec's settings (`ModelSpec.settings_digest`): its activation function..."""
    weights: str
    """sha256 of the model's parameters (so also their dtype)."""
    windows: str
    """sha256 of the training windows' token ids: the corpus, the tokenizer and the context size."""
    valid: tuple[int, int]
    seed: int
    chunk_tokens: int
    model_batch_size: int
    dtype: str

    def digest(self) -> str:
        return key_digest(self)


class ActivationCache:
    def __init__(self, root: str | Path, key: StreamKey, hooks: dict[str, str]):
        self.key, self.hooks = key, dict(hooks)
        self.folder = Path(root).expanduser() / "activations" / key.digest()

    def path(self, site: str, index: int) -> Path:
        return self.folder / self.hooks[site] / f"{index:06d}.pt"

    def header(self, site: str) -> dict:
        return {"format": FORMAT, "hook": self.hooks[site], **asdict(self.key)}

    def has(self, index: int) -> bool:
        return all(self.path(site, index).is_file() for site in self.hooks)

    def load(self, index: int) -> dict[str, Float[Tensor, "chunk_tokens d"]] | None:
        """Chunk `index` at every site, or None if any site's shard is missing."""
        if not self.has(index):
            return None
        chunk = {}
        for site in self.hooks:
            path = self.path(site, index)
            try:
                shard = torch.load(path, map_location="cpu", weights_only=True)
                header, rows = shard["header"], shard["rows"]
            except Exception as e:  # noqa: BLE001 - any unreadable shard gets the same message
                raise ActivationCacheError(
                    f"activation cache shard {path} cannot be read ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}). Delete it "
                    "and it is recomputed; the other shards are kept.") from None
            expected = self.header(site)
            if header != expected:
                differ = sorted(k for k in expected if header.get(k) != expected[k])
                raise ActivationCacheError(
                    f"activation cache shard {path} was written for another stream: "
                    + ", ".join(f"{k} {header.get(k)!r} there, {expected[k]!r} here" for k in differ)
                    + ". It is not read: delete its folder, or set cache_dir elsewhere.")
            chunk[site] = rows
        return chunk

    def save(self, index: int, chunk: dict[str, Float[Tensor, "chunk_tokens d"]]) -> None:
        for site, rows in chunk.items():
            rows = rows.detach().cpu().contiguous()
            if rows.untyped_storage().nbytes() != rows.nbytes:  # a view would save its whole base
                rows = rows.clone()
            with atomic_path(self.path(site, index)) as tmp:
                torch.save({"header": self.header(site), "rows": rows}, tmp)
