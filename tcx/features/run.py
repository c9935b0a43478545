"""`read_features(paths)`: dashboards and interpretability scores for every feature of saved
dictionaries, from one pass of their model over held-out text.

Dictionaries are opened through `tcx.runs` (model units, the model and corpus their run used); the
text is the corpus's held-out windows, which training never saw (`tcx.features.collect` splits them
into a read half and a test half).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tcx import metrics_file
from tcx.errors import ConfigError
from tcx.features.collect import Batch, Reader, Scorer
from tcx.features.config import FeaturesConfig
from tcx.features.page import write_page
from tcx.features.report import report
from tcx.features.weights import TokenMaps
from tcx.io import write_text
from tcx.runs import open_runs

SCORE_KEYS = ("detection", "fuzzing", "context_free", "scored_features")
"""What a dictionary's summary adds to its metrics.json (and so to tcx-compare's columns)."""


def _pass(lm, opened, windows, valid, batch_windows: int, make, desc: str) -> list:
    """Run the model over `windows` once, feeding each dictionary's codes to its collector."""
    collectors = [make(i, d) for i, d in enumerate(opened)]
    hooks = list(dict.fromkeys(d.input_hook for d in opened))
    with torch.inference_mode():
        for start in tqdm(range(0, len(windows), batch_windows), desc=desc, unit="batch", leave=False):
            tokens = windows[start: start + batch_windows]
            acts = lm.run_to(tokens, hooks)
            for d, c in zip(opened, collectors, strict=True):
                x = acts[d.input_hook][:, valid]
                z = d.dictionary.encode(x.reshape(-1, x.shape[-1]).to(d.dictionary.W_enc.dtype))
                c.add(Batch(z.reshape(*x.shape[:2], -1).float(), tokens[:, valid], start))
    return collectors


def read_features(paths: list[str | Path], settings: FeaturesConfig, features: list[int] | None = None,
                  out_dir: str | Path | None = None, model: str | dict | None = None) -> dict:
    """features.json and features.html for each dictionary under `paths`; a tcx run's metrics.json
    gets the summary scores. `features`: the indices to write (all by default), written to
    features_selected.* instead, and their scores kept out of metrics.json (they are not the run's)."""
    opened = open_runs(paths, model=model)
    dicts = opened.dictionaries
    for d in dicts:
        bad = [i for i in features or [] if not 0 <= i < d.dictionary.d_sae]
        if bad:
            raise ConfigError(f"features={bad}: {d.source} has {d.dictionary.d_sae} features (0 to "
                              f"{d.dictionary.d_sae - 1}).")
    heldout, valid = opened.heldout(settings.max_tokens)
    opened.check_widths()
    lm = opened.lm
    vocab = int(lm.bridge.cfg.d_vocab)
    read, test = heldout[0::2], heldout[1::2]
    started = time.perf_counter()
    readers = _pass(lm, dicts, read, valid, settings.batch_windows,
                    lambda i, d: Reader(d.dictionary.d_sae, vocab, settings.top, settings.per_band,
                                        settings.context, settings.bands, settings.seed), "reading features")
    scorers = _pass(lm, dicts, test, valid, settings.batch_windows,
                    lambda i, d: Scorer(readers[i], settings.positives, settings.negatives, settings.seed + 1),
                    "scoring features")
    seconds = time.perf_counter() - started
    n_tokens = (len(read) + len(test)) * (valid.stop - valid.start)
    maps = TokenMaps(lm, settings.top_tokens)
    results: dict = {"dictionaries": {}, "written": [], "tokens": n_tokens, "seconds": seconds,
                     "tokens_per_second": n_tokens / seconds}
    for d, r, s in zip(dicts, readers, scorers, strict=True):
        doc = report(d, r, s, maps, lm, read[:, valid], test[:, valid], settings, features)
        doc["throughput"] = {k: results[k] for k in ("tokens", "seconds", "tokens_per_second")}
        path = d.features_file(out_dir, selected=bool(features))
        if d.writes_into_run(out_dir) and not features:
            metrics_file.update(d.source, {k: doc["summary"][k] for k in SCORE_KEYS})
        text = json.dumps(doc, separators=(",", ":"))  # compact: tens of MB at 24k features
        write_text(path, text)
        write_page(doc, text, path.with_suffix(".html"))
        results["dictionaries"][d.ident] = doc["summary"]
        results["written"] += [str(path), str(path.with_suffix(".html"))]
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the pages included
    return results
