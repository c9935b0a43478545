"""One dictionary's features.json: per feature what the read half showed, its token maps, and the
scores on the test half; a summary for tcx-compare."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from tcx.features.collect import Reader, Scorer, contexts
from tcx.features.config import FeaturesConfig
from tcx.features.proxy import score_feature
from tcx.features.weights import TokenMaps
from tcx.runs.record import OpenedDictionary


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(f"{v:.4g}")


class _Writer:
    """Turns stored entries into JSON contexts, remembering every token id it used."""

    def __init__(self, c: int, stores: list):
        self.c = c
        self.used: set[int] = set()
        self.held = {id(s): s.filled for s in stores}  # once: `filled` scans the whole store

    def examples(self, tokens: Tensor, store, group: int) -> list[dict[str, Any]]:
        held = self.held[id(store)][group]
        loc, acts = store.payload["loc"][group][held], store.payload["acts"][group][held]
        ids = contexts(tokens, loc, self.c)
        out = []
        for t, a in zip(ids.tolist(), acts.tolist(), strict=True):
            keep = [i for i, tok in enumerate(t) if tok >= 0]
            self.used.update(t[i] for i in keep)
            out.append({"tokens": [t[i] for i in keep], "acts": [_num(a[i]) for i in keep],
                        "peak": keep.index(self.c)})
        return out

    def ends(self, ids: Tensor, values: Tensor) -> list[list]:
        self.used.update(ids.tolist())
        return [[int(i), _num(float(v))] for i, v in zip(ids, values, strict=True)]


def report(d: OpenedDictionary, r: Reader, s: Scorer, maps: TokenMaps, lm, read: Tensor, test: Tensor,
           settings: FeaturesConfig, features: list[int] | None) -> dict[str, Any]:
    wanted = torch.tensor(features) if features else torch.arange(r.d_sae)
    live = wanted[r.fired[wanted] > 0]
    de_emb = maps.de_embedding(d, live) if d.is_transcoder else None
    logits = maps.logits(d, live)
    where = {int(f): i for i, f in enumerate(live)}
    context_free = s.context_free()
    negatives = s.negative_contexts(test)
    gen = torch.Generator().manual_seed(settings.seed)
    w = _Writer(r.c, [r.top, r.bands])
    records, scores = [], {"detection": [], "fuzzing": [], "context_free": []}
    for f in wanted.tolist():
        freq = float(r.fired[f]) / max(r.rows, 1)
        if r.fired[f] == 0:
            records.append({"index": f, "dead": True, "frequency": 0.0})
            continue
        top = w.examples(read, r.top, f)
        shown = r.hist.shown_bands(f)
        counts, edges = r.hist.band_counts(f), r.hist.band_edges(f)
        bins = int(r.hist.bin_of(torch.tensor([f]), r.hist.max[f:f + 1], r.hist.bins)) + 1
        expl, det, fuzz = score_feature([t["tokens"][t["peak"]] for t in top], s, test, f, negatives, gen)
        cf = _num(float(context_free[f]))
        rec = {"index": f, "dead": False, "frequency": freq, "fired": int(r.fired[f]),
               "max": float(r.hist.max[f]), "dense": freq > settings.dense_threshold,
               "histogram": {"width": float(r.hist.scale[f]) / r.hist.bins, "counts": r.hist.counts[f, :bins].tolist()},
               "top": top,
               "bands": [{"lo": edges[j], "hi": edges[j + 1], "share": counts[j] / int(r.fired[f]),
                          "examples": w.examples(read, r.bands, f * r.hist.bands + j)} for j in range(shown)],
               "explanation": sorted(expl), "detection": det, "fuzzing": fuzz, "context_free": cf}
        w.used.update(expl)
        i = where[f]
        if de_emb is not None:
            rec["de_embedding"] = {"top": w.ends(de_emb[0][i], de_emb[1][i]),
                                   "bottom": w.ends(de_emb[2][i], de_emb[3][i])}
        if logits is not None:
            rec["logits"] = {"top": w.ends(logits[0][i], logits[1][i]), "bottom": w.ends(logits[2][i], logits[3][i])}
        for key, v in (("detection", det), ("fuzzing", fuzz), ("context_free", cf)):
            if v is not None:
                scores[key].append(v)
        records.append(rec)
    vocab = {str(t): text for t, text in lm.display(sorted(w.used)).items()}
    both = [r_ for r_ in records if r_.get("detection") is not None and r_.get("fuzzing") is not None]
    summary = {"features": len(wanted), "live": len(live), "dead": len(wanted) - len(live),
               "scored_features": len(both), "read_tokens": r.rows, "test_tokens": s.rows,
               **{k: (sum(v) / len(v) if v else None) for k, v in scores.items()}}
    return {"dictionary": d.name, "source": str(d.source), "format": d.format, "model": lm.spec.name,
            "layer": d.layer, "input_hook": d.input_hook, "target_hook": d.target_hook,
            "kind": d.meta.get("kind"), "transcoder": d.is_transcoder, "d_sae": r.d_sae,
            "summary": summary, "vocab": vocab, "features": records}
