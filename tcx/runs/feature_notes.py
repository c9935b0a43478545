"""What `tcx-features` wrote about a dictionary's features (features.json beside its weights), read
back for other tools: a circuit's feature cards show each feature's top contexts and explanation,
and circuit-tracer's frontend gets its own feature files (`circuit_tracer`)."""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class FeatureNotes:
    def __init__(self, path: Path, examples: int = 5):
        """`path`: the dictionary's features.json (`OpenedDictionary.features_file()`)."""
        self.path, self.examples = Path(path), examples

    @cached_property
    def _doc(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("ignoring %s: %s (rerun tcx-features to rewrite it)", self.path, e)
            return None
        doc["by_index"] = {f["index"]: f for f in doc["features"]}
        return doc

    def _text(self, context: dict[str, Any]) -> str:
        vocab = self._doc["vocab"]
        words = [vocab.get(str(t), "?") for t in context["tokens"]]
        words[context["peak"]] = f"⟦{words[context['peak']]}⟧"
        return "".join(words)

    def circuit_tracer(self, index: int) -> dict[str, Any] | None:
        """The feature in circuit-tracer's frontend schema (`circuit_tracer.frontend.feature_models.Model`):
        top activations, then each activation band as a quantile; None when there is nothing read."""
        feature = self._doc["by_index"].get(index) if self._doc else None
        if feature is None or feature["dead"]:
            return None
        vocab = self._doc["vocab"]

        def examples(contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"tokens": [vocab.get(str(t), "?") for t in c["tokens"]], "train_token_ind": c["peak"],
                     "tokens_acts_list": [a or 0.0 for a in c["acts"]], "is_repeated_datapoint": False}
                    for c in contexts]

        bands = [{"quantile_name": f"band {b['lo']:.3g}-{b['hi']:.3g} ({100 * b['share']:.1f}%)",
                  "examples": examples(b["examples"])} for b in reversed(feature["bands"])]
        logits = feature.get("logits") or {"top": [], "bottom": []}
        return {"transcoder_id": str(self.path.parent), "index": index, "act_min": 0.0, "act_max": feature["max"],
                "examples_quantiles": [{"quantile_name": "top activations", "examples": examples(feature["top"])},
                                       *bands],
                "top_logits": [vocab.get(str(t), "?") for t, _ in logits["top"]],
                "bottom_logits": [vocab.get(str(t), "?") for t, _ in logits["bottom"]],
                "quantile_values": [b["hi"] for b in feature["bands"]],
                "histogram": [float(c) for c in feature["histogram"]["counts"]],
                "activation_frequency": feature["frequency"]}

    def of(self, index: int) -> dict[str, Any]:
        """Card fields for one feature: lines (frequency, explanation, scores) and top contexts
        with the peak token bracketed; empty when tcx-features has not read this dictionary."""
        feature = self._doc["by_index"].get(index) if self._doc else None
        if feature is None:
            return {}
        if feature["dead"]:
            return {"lines": ["dead in the text tcx-features read"]}
        words = ", ".join(repr(self._doc["vocab"].get(str(t), "?")) for t in feature["explanation"])
        scores = " · ".join(f"{k} {feature[k]:.2f}" for k in ("detection", "fuzzing", "context_free")
                            if feature.get(k) is not None)
        return {"lines": [f"fires on {feature['frequency']:.2e} of tokens · explanation {words}", scores],
                "examples": [self._text(c) for c in feature["top"][: self.examples]]}
