"""A circuit's files: graph.json in circuit-tracer's schema (extra tcx fields under `tcx`), the full
graph as safetensors, the paths as text and as a second graph (paths.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tcx.circuits.graph import AttributionGraph
from tcx.circuits.nodes import FEATURE_TYPE, Node
from tcx.circuits.paths import PathGraph
from tcx.io import save_tensors, write_text

SCHEMA_QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}


def cantor(layer: int, index: int) -> int:
    """circuit-tracer's feature number for (layer, index): its frontend loads features/<scan>/<number>.json."""
    return (layer + index) * (layer + index + 1) // 2 + index


def _node_json(node: Node, n_layers: int, tokens: list[str], node_id: str, activation: float | None,
               influence: float | None, token_prob: float = 0.0, target: str | None = None) -> dict[str, Any]:
    """`target`: the target's own label (`logit(' r')`), which its node shows."""
    clerp = node.describe(tokens, target)
    return {
        "node_id": node_id, "jsNodeId": node_id,
        "feature": cantor(node.layer, node.index) if node.kind == "feature" else -1,
        "layer": node.layer_label(n_layers), "ctx_idx": int(node.pos or 0), "feature_type": FEATURE_TYPE[node.kind],
        "token_prob": token_prob, "is_target_logit": node.kind in ("logit", "target"), "run_idx": 0,
        "reverse_ctx_idx": 0, "clerp": clerp,
        "influence": None if influence is None else float(influence),
        "activation": None if activation is None else float(activation),
    }


def _document(meta: dict[str, Any], tokens: list[str], nodes: list[dict], links: list[dict],
              tcx: dict[str, Any]) -> dict[str, Any]:
    metadata = {"slug": meta["slug"], "scan": meta["scan"], "transcoder_list": meta["transcoder_list"],
                "prompt_tokens": tokens, "prompt": meta["prompt"], "node_threshold": meta["node_threshold"],
                "schema_version": 1}
    return {"metadata": metadata, "qParams": SCHEMA_QPARAMS, "nodes": nodes, "links": links, "tcx": tcx}


def graph_document(graph: AttributionGraph, keep: torch.Tensor, edges: torch.Tensor, node_influence: torch.Tensor,
                   meta: dict[str, Any], tcx: dict[str, Any]) -> dict[str, Any]:
    n, ids = graph.n_layers, [node.node_id(graph.n_layers) for node in graph.nodes]
    assert len(set(ids)) == len(ids), "two nodes share an id"
    nodes = [_node_json(node, n, graph.tokens, ids[i], float(graph.activations[i]), float(node_influence[i]),
                        graph.target.token_prob if node.kind == "logit" else 0.0, graph.target.label)
             for i, node in enumerate(graph.nodes) if keep[i]]
    dst, src = edges.nonzero(as_tuple=True)
    links = [{"source": ids[s], "target": ids[d], "weight": float(graph.adjacency[d, s])}
             for d, s in zip(dst.tolist(), src.tolist(), strict=True)]
    return _document(meta, graph.tokens, nodes, links, tcx)


def path_document(paths: PathGraph, n_layers: int, tokens: list[str], meta: dict[str, Any],
                  tcx: dict[str, Any], activations: dict[Node, float], target: str | None = None) -> dict[str, Any]:
    """Path-search nodes are routes (a node as reached from the target): ids get the route's number."""
    number = {route: k for k, route in enumerate(paths.values)}

    def ident(route: tuple[Node, ...]) -> str:
        return f"{route[-1].node_id(n_layers)}~{number[route]}"

    nodes = [_node_json(route[-1], n_layers, tokens, ident(route), activations.get(route[-1]), value, target=target)
             for route, value in paths.values.items()]
    links = [{"source": ident(c), "target": ident(p), "weight": v} for (c, p), v in paths.edges.items()]
    listed = [{"value": p.value, "nodes": [ident(tuple(p.nodes[: k + 1])) for k in range(len(p.nodes))
                                           if tuple(p.nodes[: k + 1]) in number]} for p in paths.paths]
    return _document(meta, tokens, nodes, links, {**tcx, "paths": listed})


def write_feature_files(doc: dict[str, Any], notes: dict[int, Any], out_dir: Path) -> list[Path]:
    """circuit-tracer's per-feature files for the graph's feature nodes that tcx-features has read:
    `features/<scan>/<number>.json`, where its frontend (served from `out_dir`) looks for them."""
    written = []
    for node in doc["nodes"]:
        if node["feature_type"] != FEATURE_TYPE["feature"]:
            continue
        layer, index = int(node["layer"]), int(node["node_id"].split("_")[1])
        card = notes[layer].circuit_tracer(index) if layer in notes else None
        if card is not None:
            path = out_dir / "features" / doc["metadata"]["scan"] / f"{node['feature']}.json"
            write_text(path, json.dumps(card))
            written.append(path)
    return written


def write_tensors(graph: AttributionGraph, path: Path) -> None:
    kinds = sorted(set(FEATURE_TYPE))
    table = torch.tensor([[kinds.index(nd.kind), -9 if nd.layer is None else nd.layer,
                           -1 if nd.pos is None else nd.pos, -1 if nd.index is None else nd.index]
                          for nd in graph.nodes], dtype=torch.long)
    save_tensors({"adjacency": graph.adjacency.contiguous(), "activations": graph.activations.contiguous(),
                  "nodes": table},
                 path, metadata={"kinds": json.dumps(kinds), "columns": "kind,layer,pos,index",
                                 "node_ids": json.dumps([nd.node_id(graph.n_layers) for nd in graph.nodes]),
                                 "rows": "target node, columns: source node"})
