"""Token windows: a corpus tokenised into fixed-length context windows, cached on disk.

Documents are joined into token streams (with the model's separator token between them) and cut
into windows of `ctx_len`, each opened and closed by the model's special tokens. Which text is
held out for evaluation is the corpus's `holdout`:

- `documents` (the default): a document is held out when a hash of its text falls in one of
  `holdout_every` buckets, and the held-out documents form a stream of their own. Held-out numbers
  are then on text the run never saw, not on the neighbours of training windows, and a document
  that appears twice (a docstring copied into two packages) lands on one side only. A document
  longer than `PIECE_WINDOWS` windows is split into pieces of that length, each hashed with its
  index, so that a corpus of a few long files still holds some of its text out.
- `windows`: window `i` of one stream is held out when `i % holdout_every == holdout_every - 1`
  (tcx's split before November 2026; the README's numbers marked so were measured with it).

Documents come in a fixed order and each stream only grows, so the first N windows of either side
are the same whatever N is: asking for more tokens never moves a window from one side to the other.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable
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
    train: Int[Tensor, "window ctx"]
    heldout: Int[Tensor, "window ctx"]
    n_prefix: int
    """Special tokens at the start of each window: their activations are not trained on."""
    n_suffix: int

    @property
    def valid(self) -> slice:
        """Positions of each window that hold corpus tokens."""
        return slice(self.n_prefix, self.train.shape[1] - self.n_suffix)

    @property
    def tokens_per_window(self) -> int:
        return self.train.shape[1] - self.n_prefix - self.n_suffix


PIECE_WINDOWS = 8
"""Documents longer than this many windows are held out (or not) piece by piece."""


def heldout_pieces(text: str, n_pieces: int, holdout_every: int) -> list[bool]:
    """Which pieces of a document are held out: a stable hash of its text and the piece's index,
    the same on every machine and Python (a short document is one piece)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return [int.from_bytes(hashlib.blake2b(digest + i.to_bytes(8, "little"), digest_size=8).digest(), "little")
            % holdout_every == 0 for i in range(n_pieces)]


def windows_needed(train_tokens: int, tokens_per_window: int, holdout_every: int) -> int:
    """Windows of one stream that hold `train_tokens` training tokens under `holdout=windows`."""
    train_windows = math.ceil(train_tokens / tokens_per_window)
    return math.ceil(train_windows * holdout_every / (holdout_every - 1)) + 1


def load_windows(corpus: Corpus, lm: LanguageModel, train_tokens: int, cache_dir: str | Path,
                 heldout_tokens: int = 0) -> TokenWindows:
    """Windows for at least `train_tokens` training and `heldout_tokens` held-out tokens (fewer if
    the corpus is smaller: training then repeats it), from the cache when an earlier run tokenised
    as many or more."""
    prefix, suffix = lm.prefix_ids, lm.suffix_ids
    body = lm.spec.ctx_len - len(prefix) - len(suffix)
    every = corpus.holdout_every
    key = hashlib.sha256(
        f"{corpus.fingerprint()}|{lm.spec.name}|{lm.spec.ctx_len}|{prefix}|{suffix}|"
        f"{lm.spec.separator_token}|{corpus.holdout}|{every}|{PIECE_WINDOWS}".encode()).hexdigest()[:20]
    split = _split_by_windows if corpus.holdout == "windows" else _split_by_documents
    train, heldout = split(corpus, lm, Path(cache_dir).expanduser(), key, train_tokens,
                           math.ceil(heldout_tokens / body), body)
    if len(train) < math.ceil(train_tokens / body):
        log.warning("corpus %s holds %d training windows, fewer than the %d asked for: training "
                    "repeats it", corpus.name, len(train), math.ceil(train_tokens / body))
    if heldout_tokens and not len(heldout):
        raise CorpusError(f"data={corpus.name} held out no text: documents (and pieces of "
                          f"{PIECE_WINDOWS} windows of long ones) are held out by a hash of their text, "
                          f"1 in data.holdout_every={every}, and none of this corpus's fell there. Give it "
                          "more text, or lower data.holdout_every.")
    return TokenWindows(train, heldout, len(prefix), len(suffix))


def _split_by_documents(corpus: Corpus, lm: LanguageModel, cache: Path, key: str, train_tokens: int,
                        held_windows: int, body: int) -> tuple[Tensor, Tensor]:
    """Training and held-out windows from two streams, each document's pieces sent by their hash."""
    def sides(doc: str, n: int) -> list[str]:
        return ["heldout" if h else "train" for h in heldout_pieces(doc, n, corpus.holdout_every)]

    train_windows = math.ceil(train_tokens / body)
    streams = _cached_or_tokenised(corpus, lm, cache, key, {"train": train_windows, "heldout": held_windows},
                                   sides, body)
    return streams["train"][:train_windows], streams["heldout"]


def _split_by_windows(corpus: Corpus, lm: LanguageModel, cache: Path, key: str, train_tokens: int,
                      held_windows: int, body: int) -> tuple[Tensor, Tensor]:
    """Every `holdout_every`-th window of one stream held out. The training windows are those among
    the first `windows_needed(train_tokens)`, exactly as before documents were split, so earlier runs
    reproduce; more held-out windows, when asked for, come from further on."""
    every = corpus.holdout_every
    n_train = windows_needed(train_tokens, body, every)
    n = max(n_train, held_windows * every)
    tokens = _cached_or_tokenised(corpus, lm, cache, key, {"all": n}, lambda _, pieces: ["all"] * pieces,
                                  body)["all"][:n]
    held = torch.arange(len(tokens)) % every == every - 1
    return tokens[:n_train][~held[:n_train]], tokens[held]


def _cached_or_tokenised(corpus: Corpus, lm: LanguageModel, cache: Path, key: str, need: dict[str, int],
                         sides: Callable[[str, int], list[str]], body: int) -> dict[str, Tensor]:
    streams = _from_cache(cache, key, need)
    if streams is None:
        streams, complete = _tokenise(corpus, lm, need, sides, body)
        cache.mkdir(parents=True, exist_ok=True)
        counts = "-".join(str(len(streams[name])) for name in sorted(need))
        name = f"{key}-{counts}{'-all' if complete else ''}.pt"
        with atomic_path(cache / name) as tmp:
            torch.save(streams, tmp)
        log.info("cached %s windows of %s in %s", counts, corpus.name, cache / name)
    return streams


def _from_cache(cache: Path, key: str, need: dict[str, int]) -> dict[str, Tensor] | None:
    """The smallest cached tokenisation that holds `need` windows of every stream (or all of the
    corpus), else None."""
    names = sorted(need)
    best = None
    for path in cache.glob(f"{key}-*.pt"):
        m = re.fullmatch(rf"{key}((?:-\d+){{{len(names)}}})(-all)?\.pt", path.name)
        if not m:
            continue
        counts = [int(c) for c in m[1][1:].split("-")]
        enough = m[2] or all(c >= need[n] for c, n in zip(counts, names, strict=True))
        if enough and (best is None or sum(counts) < best[0]):
            best = (sum(counts), path)
    if best is None:
        return None
    try:
        streams = torch.load(best[1], weights_only=True)
        if not isinstance(streams, dict) or sorted(streams) != names:
            raise ValueError("not a dict of the streams")
        return streams
    except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never trusted
        log.warning("token cache %s is unreadable; tokenising again", best[1])
        return None


def _tokenise(corpus: Corpus, lm: LanguageModel, need: dict[str, int], sides: Callable[[str, int], list[str]],
              body: int) -> tuple[dict[str, Tensor], bool]:
    """Documents in order, each piece appended to the stream `sides` names for it, until every
    stream holds `need` windows (or the corpus ends); each stream cut into whole windows."""
    sep = lm.special_ids(lm.spec.separator_token)
    streams: dict[str, list[int]] = {name: [] for name in need}
    short = {name for name, n in need.items() if n > 0}
    complete = True
    total = sum(need.values()) * body
    with tqdm(total=total, desc=f"tokenising {corpus.name}", unit="tok", unit_scale=True) as bar:
        for doc in corpus.documents():
            ids = lm.encode(doc) + sep
            piece = PIECE_WINDOWS * body
            for i, name in enumerate(sides(doc, -(-len(ids) // piece))):
                stream = streams[name]
                before = min(len(stream), need[name] * body)
                stream.extend(ids[i * piece: (i + 1) * piece])
                bar.update(min(len(stream), need[name] * body) - before)
                if len(stream) >= need[name] * body:
                    short.discard(name)
            if not short:
                complete = False
                break
    trained_on = "train" if "train" in need else "all"
    if need[trained_on] and len(streams[trained_on]) // body < 2:
        n, kept = sum(len(s) for s in streams.values()), len(streams[trained_on])
        held = (f" ({n - kept} more were held out: documents go there by a hash of their text, 1 in "
                f"data.holdout_every={corpus.holdout_every}; raise it, or give the corpus more text)"
                if n > kept else "")
        raise CorpusError(f"data={corpus.name} leaves {kept} tokens to train on, fewer than two windows of "
                          f"{body}{held}: the corpus is empty or too small.")
    return {name: _cut(stream, body, lm.prefix_ids, lm.suffix_ids) for name, stream in streams.items()}, complete


def _cut(stream: list[int], body: int, prefix: list[int], suffix: list[int]) -> Int[Tensor, "window ctx"]:
    n = len(stream) // body
    rows = torch.tensor(stream[: n * body], dtype=torch.int64).view(n, body)
    parts = [torch.tensor([prefix] * n, dtype=torch.int64).view(n, len(prefix))] if prefix else []
    parts.append(rows)
    if suffix:
        parts.append(torch.tensor([suffix] * n, dtype=torch.int64).view(n, len(suffix)))
    return torch.cat(parts, dim=1)
