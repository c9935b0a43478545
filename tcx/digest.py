"""Content hashes the caches key on (activation shards, evaluation baselines)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict

import torch


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 of the tensors' bytes, in order (so also of their dtypes' widths), 16 hex digits."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def json_digest(value) -> str:
    """sha256 of a JSON-able value (keys sorted; anything else by its str), 16 hex digits."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key_digest(key) -> str:
    """sha256 of a key dataclass's fields, 16 hex digits: a cache folder's or file's name."""
    return json_digest(asdict(key))
