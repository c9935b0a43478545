"""Token windows: a corpus tokenised into fixed-length context windows, cached on disk.

Documents are joined into one token stream (with the model's separator token between them) and cut
into windows of `ctx_len`, each opened and closed by the model's special tokens. Window `i` is held
out for evaluation when `i % holdout_every == holdout_every - 1`; since documents come in a fixed
order, that split does not move when more windows are asked for.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from tcx.data.corpus import Corpus
from tcx.errors import CorpusError
from tcx.io import atomic_path
from tcx.models.lm import LanguageModel

log = logging.getLogger(__name__)


@dataclass
class TokenWindows:
    tokens: Int[Tensor, "window ctx"]
    holdout_every: int
    n_prefix: int
    """Special tokens at the start of each window: their activations are not trained on."""
    n_suffix: int

    @property
    def valid(self) -> slice:
        """Positions of each window that hold corpus tokens."""
        return slice(self.n_prefix, self.tokens.shape[1] - self.n_suffix)

    @property
    def tokens_per_window(self) -> int:
        return self.tokens.shape[1] - self.n_prefix - self.n_suffix

    def _is_heldout(self) -> Tensor:
        index = torch.arange(len(self.tokens))
        return index % self.holdout_every == self.holdout_every - 1

    @property
    def train(self) -> Int[Tensor, "window ctx"]:
        return self.tokens[~self._is_heldout()]

    @property
    def heldout(self) -> Int[Tensor, "window ctx"]:
        return self.tokens[self._is_heldout()]


def windows_needed(train_tokens: int, tokens_per_window: int, holdout_every: int) -> int:
    train_windows = math.ceil(train_tokens / tokens_per_window)
    return math.ceil(train_windows * holdout_every / (holdout_every - 1)) + 1


def load_windows(corpus: Corpus, lm: LanguageModel, train_tokens: int, cache_dir: str | Path
                 ) -> TokenWindows:
    """At least enough windows for `train_tokens` training tokens (fewer if the corpus is smaller,
    then training repeats it), from the cache when an earlier run tokenised as many or more."""
    prefix, suffix = lm.prefix_ids, lm.suffix_ids
    body = lm.spec.ctx_len - len(prefix) - len(suffix)
    n = windows_needed(train_tokens, body, corpus.holdout_every)
    key = hashlib.sha256(
        f"{corpus.fingerprint()}|{lm.spec.name}|{lm.spec.ctx_len}|{prefix}|{suffix}|"
        f"{lm.spec.separator_token}".encode()).hexdigest()[:20]
    cache = Path(cache_dir).expanduser()
    tokens = _from_cache(cache, key, n)
    if tokens is None:
        tokens, complete = _tokenise(corpus, lm, n, body, prefix, suffix)
        cache.mkdir(parents=True, exist_ok=True)
        name = f"{key}-{len(tokens)}{'-all' if complete else ''}.pt"
        with atomic_path(cache / name) as tmp:
            torch.save(tokens, tmp)
        log.info("cached %d windows of %s in %s", len(tokens), corpus.name, cache / name)
    if len(tokens) < n:
        log.warning("corpus %s holds %d windows, fewer than the %d asked for: training repeats it",
                    corpus.name, len(tokens), n)
    return TokenWindows(tokens[:n], corpus.holdout_every, len(prefix), len(suffix))


def _from_cache(cache: Path, key: str, n: int) -> Tensor | None:
    best = None
    for path in cache.glob(f"{key}-*.pt"):
        m = re.fullmatch(rf"{key}-(\d+)(-all)?\.pt", path.name)
        if m and (int(m[1]) >= n or m[2]) and (best is None or int(m[1]) < best[0]):
            best = (int(m[1]), path)
    if best is None:
        return None
    try:
        return torch.load(best[1], weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
        log.warning("token cache %s is unreadable; tokenising again", best[1])
        return None


def _tokenise(corpus: Corpus, lm: LanguageModel, n: int, body: int, prefix: list[int],
              suffix: list[int]) -> tuple[Tensor, bool]:
    sep = lm.special_ids(lm.spec.separator_token)
    stream: list[int] = []
    need = n * body
    complete = True
    with tqdm(total=need, desc=f"tokenising {corpus.name}", unit="tok", unit_scale=True) as bar:
        for doc in corpus.documents():
            ids = lm.encode(doc) + sep
            stream.extend(ids)
            bar.update(min(len(ids), max(0, need - bar.n)))
            if len(stream) >= need:
                complete = False
                break
    n_windows = min(n, len(stream) // body)
    if n_windows < 2:
        raise CorpusError(f"data={corpus.name} holds {len(stream)} tokens, fewer than two windows of "
                          f"{body}: the corpus is empty or too small.")
    rows = torch.tensor(stream[: n_windows * body], dtype=torch.int64).view(n_windows, body)
    parts = [torch.tensor([prefix] * n_windows, dtype=torch.int64)] if prefix else []
    parts.append(rows)
    if suffix:
        parts.append(torch.tensor([suffix] * n_windows, dtype=torch.int64))
    return torch.cat(parts, dim=1), complete
