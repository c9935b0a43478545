"""`run_circuit(cfg, out_dir)`: open the transcoders, replay the prompt, attribute, prune, search
paths, write the cards and every file. The CLI (`tcx-circuit`) is a thin shell around it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tcx.circuits.cards import Cards
from tcx.circuits.config import CircuitConfig, GraphConfig
from tcx.circuits.direct import Direct
from tcx.circuits.graph import AttributionGraph, attribute
from tcx.circuits.nodes import Node
from tcx.circuits.page import write_page, write_png
from tcx.circuits.paths import PathGraph, format_paths, search
from tcx.circuits.prune import prune_graph, scores
from tcx.circuits.replacement import ReplacementModel
from tcx.circuits.sources import Sources
from tcx.circuits.targets import Target
from tcx.circuits.targets.logit import LogitConfig
from tcx.circuits.write import graph_document, path_document, write_feature_files, write_tensors
from tcx.errors import ConfigError
from tcx.io import write_json, write_text
from tcx.runs import open_runs
from tcx.runs.open import OpenedRuns
from tcx.runs.record import OpenedDictionary


def prompt_tokens(lm: Any, prompt: str) -> torch.Tensor:
    """The prompt as the model reads a window: its prefix token(s), the text, and (BERT) [SEP]."""
    ids = lm.encode(prompt)
    if not ids:
        raise ConfigError("prompt= is empty.")
    return torch.tensor(lm.prefix_ids + ids + lm.suffix_ids)


class Built(NamedTuple):
    """One prompt's attribution graph and what it was computed from."""

    rm: ReplacementModel
    target: Target
    sources: Sources
    graph: AttributionGraph


def build_graph(lm: Any, dictionaries: list[OpenedDictionary], prompt: str, cfg: GraphConfig) -> Built:
    """The replacement model of `prompt` with `dictionaries` at their layers, and its graph."""
    rm = ReplacementModel.build(lm, dictionaries, prompt_tokens(lm, prompt),
                                getattr(torch, cfg.replay_dtype) if cfg.replay_dtype else None, cfg.replay_rtol)
    target = (cfg.target or LogitConfig()).resolve(rm)
    sources = Sources(rm)
    return Built(rm, target, sources, attribute(rm, target, cfg.max_feature_nodes, cfg.batch_size, cfg.progress,
                                                sources))


def open_for_graphs(paths: list[str | Path], cfg: GraphConfig) -> OpenedRuns:
    runs = open_runs(paths, model=cfg.model)
    if cfg.model_dtype:
        runs.model_dtype = cfg.model_dtype
    return runs


def run_circuit(cfg: CircuitConfig, out_dir: str | Path) -> dict[str, Any]:
    out_dir, started = Path(out_dir), time.time()
    runs = open_for_graphs([cfg.transcoders] if isinstance(cfg.transcoders, str) else list(cfg.transcoders), cfg)
    rm, target, sources, graph = build_graph(runs.lm, runs.dictionaries, cfg.prompt, cfg)
    pruned = prune_graph(graph, cfg.prune.node_threshold, cfg.prune.edge_threshold)
    graph_scores = scores(graph.adjacency, graph.target_weights, [n.kind for n in graph.nodes])
    paths = search(Direct(rm, sources), target, graph.nodes[-1], cfg.search.num_iters,
                   cfg.search.num_branches, cfg.progress)
    cards = Cards(rm, cfg.card_top)
    shown = [n for i, n in enumerate(graph.nodes) if pruned.nodes[i]] + [route[-1] for route in paths.values]
    card_json = cards.cards(list(dict.fromkeys(shown)), rm.n_layers)
    summary = _summary(cfg, rm, graph, target, graph_scores, pruned.nodes, paths, time.time() - started)
    meta = {"slug": out_dir.name, "scan": runs.spec.name, "prompt": cfg.prompt,
            "transcoder_list": [str(d.source) for d in runs.dictionaries], "node_threshold": cfg.prune.node_threshold}
    tcx = {"target": {"kind": target.kind, "label": target.label, "value": target.value},
           "scores": graph_scores, "n_layers": rm.n_layers, "cards": card_json, "summary": summary}
    doc = graph_document(graph, pruned.nodes, pruned.edges, pruned.node_influence, meta, tcx)
    activation = {Node("feature", lyr, p, i): z for lyr, p, i, z in sources.active()}
    path_doc = path_document(paths, rm.n_layers, graph.tokens, meta, tcx, activation, graph.target.label)
    write_json(out_dir / "graph.json", doc)
    write_feature_files(doc, cards.notes, out_dir)
    write_json(out_dir / "paths.json", path_doc)
    write_tensors(graph, out_dir / "graph.safetensors")
    write_text(out_dir / "paths.txt", format_paths(paths, graph.tokens))
    write_page(doc, out_dir / "circuit.html")
    write_png(doc, out_dir / "circuit.png")
    write_page(path_doc, out_dir / "paths.html")
    write_json(out_dir / "summary.json", summary)
    return {"summary": summary, "graph": graph, "paths": paths, "out_dir": out_dir}


def _summary(cfg: CircuitConfig, rm: ReplacementModel, graph: AttributionGraph, target: Target,
             graph_scores: dict[str, float], keep: torch.Tensor, paths: PathGraph, seconds: float) -> dict[str, Any]:
    return {
        "model": rm.lm.spec.name, "prompt": cfg.prompt, "tokens": len(rm.tokens),
        "transcoder_layers": sorted(rm.codes), "target": target.label, "target_value": target.value,
        "target_constant": target.constant, "active_features": graph.extra["active_features"],
        "feature_nodes": graph.extra["feature_nodes"], "nodes": len(graph.nodes),
        "pruned_nodes": int(keep.sum()), "kept_feature_nodes": sum(
            bool(k) and n.kind == "feature" for n, k in zip(graph.nodes, keep.tolist(), strict=True)),
        "replacement_score": graph_scores["replacement"],
        "completeness_score": graph_scores["completeness"], "replay_error": rm.replay_error,
        "row_residual": graph.row_residual, "paths": len(paths.paths), "seconds": round(seconds, 2),
    }
