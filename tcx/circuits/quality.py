"""Circuits across a sweep: how readable each run's circuits are on a fixed prompt set, and how
stable a prompt's circuit is between runs at the same layer (two seeds, two widths).

Each run is scored alone at its layer, with the `context` transcoders at the other layers (real
MLPs where there are none), on the same prompts and target. Per run, averaged over the prompts:

    circuit_explained     the share of its MLP's influence on the target that goes through its
                          features with rows, not its error (or the `pruned` remainder of
                          features past `max_feature_nodes`): the replacement score of one layer
    circuit_nodes80       how many of its features hold `share` (0.8) of its features' influence
                          on the target (its focus): fewer is a circuit one can read
    circuit_replacement   the whole graph's replacement score (prune.py), and
    circuit_completeness  its completeness: these also count the other layers (context, real MLPs)
    circuit_stability     mean node overlap of the focus (stability.py) with the runs that differ
                          from it by the seed alone, when there are any

tcx runs get these in their metrics.json (so `tcx-compare` shows and plots them); every pair of
runs at one layer is written to circuit_quality.json with what differs between them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from tcx import metrics_file
from tcx.circuits.config import QUALITY_COLUMNS, QualityConfig
from tcx.circuits.prune import influence, normalised, scores
from tcx.circuits.replacement import SUPPORTED
from tcx.circuits.run import build_graph, open_for_graphs
from tcx.circuits.stability import Circuit, compare, decoder_matches
from tcx.errors import ConfigError
from tcx.io import write_json
from tcx.runs.record import OpenedDictionary

log = logging.getLogger(__name__)


def focus(node_influence: Float[Tensor, " node"], candidates: Bool[Tensor, " node"],
          share: float) -> Bool[Tensor, " node"]:
    """The fewest `candidates` whose influence adds up to `share` of all candidates' influence."""
    values = node_influence.abs() * candidates
    ordered = values.sort(descending=True)
    total = float(ordered.values.sum())
    chosen = torch.zeros_like(candidates)
    if total > 0:
        n = int(torch.searchsorted(ordered.values.cumsum(0), share * total * (1 - 1e-9))) + 1
        chosen[ordered.indices[: min(n, int(candidates.sum()))]] = True
    return chosen


def explained(node_influence: Float[Tensor, " node"], kinds: list[str], layers: list[int | None], layer: int) -> float:
    """At `layer`: feature nodes' influence over that of features, error and pruned remainder."""
    at = torch.tensor([lyr == layer for lyr in layers])
    share = {k: float(node_influence[at & torch.tensor([x == k for x in kinds])].sum())
             for k in ("feature", "error", "pruned")}
    total = sum(share.values())
    return share["feature"] / total if total > 0 else 0.0


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    """The mean of `key` over the rows that have a value for it (None where none has)."""
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def ident(d: OpenedDictionary) -> str:
    """A run's name in the results: its folder, and its layer where one folder holds several layers."""
    return str(d.source) if d.owns_folder else f"{d.source}#L{d.layer}"


def describe(d: OpenedDictionary) -> dict[str, Any]:
    """What sets a run apart from another at its layer: its dictionary config, width and seed."""
    return {**{k: v for k, v in (d.meta.get("config") or {}).items() if k not in ("d_sae", "expansion_factor")},
            "kind": d.meta.get("kind"), "d_sae": d.dictionary.d_sae, "seed": d.meta.get("seed")}


def _differs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list]:
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def score_run(lm, run: OpenedDictionary, context: list[OpenedDictionary], cfg: QualityConfig,
              bar: tqdm | None = None) -> tuple[dict[str, Any], list[Circuit]]:
    """One run on every prompt: its averaged scores, per-prompt numbers, and the circuits."""
    placed = [run, *(c for c in context if c.layer != run.layer)]
    per_prompt, circuits = [], []
    for prompt in cfg.prompts:
        started = time.perf_counter()
        built = build_graph(lm, placed, prompt, cfg)
        graph = built.graph
        kinds, layers = [n.kind for n in graph.nodes], [n.layer for n in graph.nodes]
        node_influence = influence(normalised(graph.adjacency), graph.target_weights)
        mine = torch.tensor([k == "feature" and lyr == run.layer for k, lyr in zip(kinds, layers, strict=True)])
        held = focus(node_influence, mine, cfg.share)
        graph_scores = scores(graph.adjacency, graph.target_weights, kinds)
        per_prompt.append({
            "prompt": prompt, "tokens": len(built.rm.tokens), "target": built.target.label,
            "target_value": built.target.value, "explained": explained(node_influence, kinds, layers, run.layer),
            "nodes80": int(held.sum()) if held.any() else None,  # None: its features carry nothing to the target
            "replacement": graph_scores["replacement"],
            "completeness": graph_scores["completeness"],
            "active_features": int(built.rm.codes[run.layer].z.gt(0).sum()),
            "seconds": round(time.perf_counter() - started, 2)})
        circuits.append(Circuit(graph.nodes, graph.adjacency.float(), held))
        if bar is not None:
            bar.update()
    if all(p["nodes80"] is None for p in per_prompt):
        log.warning("%s: its features carry nothing to the target on any prompt (a target upstream of layer "
                    "%s, or features that never fire): its circuit scores are left empty", ident(run), run.layer)
    summary = {"circuit_explained": mean(per_prompt, "explained"), "circuit_nodes80": mean(per_prompt, "nodes80"),
               "circuit_replacement": mean(per_prompt, "replacement"),
               "circuit_completeness": mean(per_prompt, "completeness")}
    return {"run": ident(run), "layer": run.layer, "setting": describe(run), **summary,
            "seconds": sum(p["seconds"] for p in per_prompt), "prompts": per_prompt}, circuits


def compare_runs(a: OpenedDictionary, b: OpenedDictionary, ca: list[Circuit], cb: list[Circuit],
                 threshold: float) -> dict[str, Any]:
    """Two runs at one layer, prompt by prompt, features matched by decoder cosine."""
    layer = a.layer

    def matches(x: OpenedDictionary, y: OpenedDictionary, circuits: list[Circuit]) -> dict[int, int]:
        rows = sorted({n.index for c in circuits for n in c.focus_nodes()})
        return decoder_matches(x.dictionary.W_dec.detach(), y.dictionary.W_dec.detach(),
                               torch.tensor(rows, dtype=torch.long), threshold)

    a_to_b, b_to_a = matches(a, b, ca), matches(b, a, cb)
    each = [compare(x, y, layer, a_to_b, b_to_a) for x, y in zip(ca, cb, strict=True)]
    return {"a": ident(a), "b": ident(b), "layer": layer, "differs": _differs(describe(a), describe(b)),
            "node_overlap": mean(each, "node_overlap"), "edge_rank_correlation": mean(each, "edge_rank_correlation"),
            "prompts": each}


def circuit_quality(cfg: QualityConfig, out_dir: str | Path) -> dict[str, Any]:
    """Score every run under `cfg.runs`, compare the runs at each layer pairwise, write the results."""
    if not cfg.prompts:
        raise ConfigError("prompts= is empty: give the fixed prompt set, e.g. 'prompts=[\"The war lasted from "
                          "1735 to 1790\", ...]'.")
    started = time.perf_counter()
    listed = lambda v: [] if v is None else [v] if isinstance(v, str) else list(v)  # noqa: E731
    given, context_paths = listed(cfg.runs), listed(cfg.context)
    opened = open_for_graphs(given, cfg)
    context = open_for_graphs(context_paths, cfg).dictionaries if context_paths else []
    names = {opened.model_config["name"], *(d.meta.get("model") or opened.model_config["name"] for d in context)}
    if len(names) > 1:
        raise ConfigError(f"context={context_paths} holds transcoders of another model than runs= ({sorted(names)}).")
    runs, skipped = [], {}
    for d in opened.dictionaries:
        activation = d.dictionary.activation().name
        if not d.is_transcoder:
            skipped[ident(d)] = "an SAE: it replaces no MLP"
        elif activation not in SUPPORTED:
            skipped[ident(d)] = f"a {activation} dictionary: its edges are undefined (circuits take {SUPPORTED})"
        else:
            runs.append(d)
    if not runs:
        raise ConfigError(f"no transcoder under runs={given} that circuits can use; left out: {skipped}.")
    bar = tqdm(total=len(runs) * len(cfg.prompts), desc="circuits", unit="graph", disable=not cfg.progress)
    cfg_quiet = dataclasses.replace(cfg, progress=False)
    results, circuits = [], {}
    for run in runs:
        result, circuits[ident(run)] = score_run(opened.lm, run, context, cfg_quiet, bar)
        results.append(result)
    bar.close()
    by_source = {ident(d): d for d in runs}
    pairs = [compare_runs(by_source[a["run"]], by_source[b["run"]], circuits[a["run"]], circuits[b["run"]],
                          cfg.match_cosine)
             for a, b in combinations(results, 2) if a["layer"] == b["layer"]]
    for r in results:
        replicas = [p for p in pairs if r["run"] in (p["a"], p["b"]) and list(p["differs"]) == ["seed"]]
        if (stability := mean(replicas, "node_overlap")) is not None:
            r["circuit_stability"] = stability
    for run, r in zip(runs, results, strict=True):  # a column this scoring has no value for is cleared
        if run.owns_folder and metrics_file.exists(run.source):
            metrics_file.update(run.source, {k: r.get(k) for k in QUALITY_COLUMNS})
    targets = list(dict.fromkeys(p["target"] for p in results[0]["prompts"]))  # a top logit: per prompt
    doc = {"prompts": list(cfg.prompts), "target": targets[0] if len(targets) == 1 else "per prompt",
           "targets": [p["target"] for p in results[0]["prompts"]],
           "context": [str(d.source) for d in context], "share": cfg.share, "match_cosine": cfg.match_cosine,
           "runs": results, "pairs": pairs, "skipped": skipped, "seconds": time.perf_counter() - started,
           "tokens": sum(p["tokens"] for p in results[0]["prompts"]) * len(results)}
    write_json(Path(out_dir) / "circuit_quality.json", doc)
    return doc
