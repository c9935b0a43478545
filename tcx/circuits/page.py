"""circuit.html and circuit.png: an attribution graph drawn as layer × token position.

`write_page` writes one self-contained HTML file (inline SVG, CSS and JS; opens from disk, asks the
network for nothing): hovering a node shows its card and lights its edges, a click pins it.
`write_png` draws the same layout with matplotlib. Both take graph.json's dict (circuit-tracer's
schema plus the `tcx` key) and write atomically.

    write_page(graph, run / "circuit.html"); write_png(graph, run / "circuit.png")
"""

from __future__ import annotations

import html
import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from tcx.circuits.page_template import NEGATIVE, POSITIVE, SCRIPT, STYLE
from tcx.io import atomic_path, write_text

# feature_type -> (shape, fill, half-size in px); the order is the order inside a cell, left to right
KINDS = {
    "cross layer transcoder": ("circle", "#f0a23b", 5),
    "attention": ("diamond", "#6bb36b", 5),
    "mlp": ("square", "#6f6f6f", 4),
    "mlp reconstruction error": ("square", "#9a9a9a", 4),
    "bias": ("square", "#b0b0b0", 4),
    "pruned": ("square", "#cfcfcf", 4),
    "embedding": ("square", "#8fb3d9", 5),
    "logit": ("circle", "#ffd400", 8),
    "target": ("circle", "#ffd400", 8),
}
OTHER = ("square", "#bbbbbb", 4)
TOP = {"logit", "target"}
COL_MIN, NODE_GAP, ROW_H, LEFT, TOP_PAD, BOTTOM = 64.0, 14.0, 40.0, 64.0, 12.0, 96.0


class Layout(NamedTuple):
    xy: dict[str, tuple[float, int]]  # node_id -> (x in px from the first column, row)
    edges: list[float]  # column boundaries in px: column i spans edges[i]..edges[i + 1]
    n_rows: int  # row 0 = embeddings, row l + 1 = layer l, row n_rows - 1 = the target

    def centers(self) -> list[float]:
        return [(a + b) / 2 for a, b in itertools.pairwise(self.edges)]

    def row_labels(self) -> list[str]:
        return ["E", *(f"L{i}" for i in range(self.n_rows - 2)), "target"]


def _rank(kind: str) -> int:
    return list(KINDS).index(kind) if kind in KINDS else len(KINDS)


def _row(node: dict[str, Any], n_layers: int) -> int:
    if node["feature_type"] in TOP:
        return n_layers + 1
    layer = str(node["layer"])
    return min(max(int(layer) + 1, 0), n_layers) if layer.lstrip("-").isdigit() else 0


def layout(graph: dict[str, Any]) -> Layout:
    """Columns are token positions, rows layers; a column is as wide as its fullest cell needs, and
    the nodes of one (layer, position) cell are spread evenly across it, most influential first."""
    n_layers = graph["tcx"]["n_layers"]
    cells: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for node in graph["nodes"]:
        cells[(max(int(node["ctx_idx"]), 0), _row(node, n_layers))].append(node)
    n_cols = max([len(graph["metadata"]["prompt_tokens"]), *(pos + 1 for pos, _ in cells)])
    fullest = [0] * n_cols
    for (pos, _), members in cells.items():
        fullest[pos] = max(fullest[pos], len(members))
    edges = list(itertools.accumulate((max(COL_MIN, NODE_GAP * k + 16) for k in fullest), initial=0.0))
    xy = {}
    for (pos, row), members in cells.items():
        members.sort(key=lambda n: (_rank(n["feature_type"]), -abs(n.get("influence") or 0)))
        step = (edges[pos + 1] - edges[pos]) / (len(members) + 1)
        for i, n in enumerate(members):
            xy[n["node_id"]] = (edges[pos] + step * (i + 1), row)
    return Layout(xy, edges, n_layers + 2)


def _links(graph: dict[str, Any], lay: Layout) -> tuple[list[dict[str, Any]], float]:
    """Links between drawn nodes, weakest first (so the strong ones lie on top), and the max |weight|."""
    links = sorted((k for k in graph["links"] if k["source"] in lay.xy and k["target"] in lay.xy),
                   key=lambda k: abs(k["weight"]))
    return links, max((abs(k["weight"]) for k in links), default=0.0) or 1.0


def _esc(text: Any) -> str:
    """HTML-escaped, slashes too, so no text from the graph can spell a URL into the page."""
    return html.escape(str(text)).replace("/", "&#47;")


def _token(text: str) -> str:
    return text.replace("\n", "↵").replace("\t", "⇥")


def _summary(graph: dict[str, Any]) -> str:
    target, scores = graph["tcx"]["target"], graph["tcx"]["scores"]
    return (f"{target['label']} ({target['kind']}) = {target['value']:.4g} · replacement "
            f"{scores['replacement']:.3f} · completeness {scores['completeness']:.3f}")


def _svg(graph: dict[str, Any]) -> str:
    lay = layout(graph)
    links, wmax = _links(graph, lay)
    width, height = LEFT + lay.edges[-1] + 8, TOP_PAD + lay.n_rows * ROW_H + BOTTOM

    def at(node_id: str) -> tuple[float, float]:
        x, row = lay.xy[node_id]
        return LEFT + x, TOP_PAD + (lay.n_rows - 0.5 - row) * ROW_H

    parts = [f'<svg id="graph-svg" width="{width:.0f}" height="{height:.0f}">']
    parts += [f'<line class="grid" x1="{LEFT + x:.1f}" x2="{LEFT + x:.1f}" y1="{TOP_PAD}" '
              f'y2="{TOP_PAD + lay.n_rows * ROW_H}"/>' for x in lay.edges]
    for row, label in enumerate(lay.row_labels()):
        y = TOP_PAD + (lay.n_rows - 0.5 - row) * ROW_H
        parts.append(f'<text class="axis" x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    y0 = TOP_PAD + lay.n_rows * ROW_H + 10
    for pos, (x, tok) in enumerate(zip(lay.centers(), graph["metadata"]["prompt_tokens"], strict=False)):
        parts.append(f'<text class="axis tok" x="{LEFT + x:.1f}" y="{y0}" text-anchor="end" '
                     f'transform="rotate(-40 {LEFT + x:.1f} {y0})">{_esc(_token(tok))}<title>{pos}</title></text>')
    for k in links:
        (x1, y1), (x2, y2) = at(k["source"]), at(k["target"])
        parts.append(f'<line class="link {"pos" if k["weight"] >= 0 else "neg"}" data-s="{_esc(k["source"])}" '
                     f'data-t="{_esc(k["target"])}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                     f'stroke-width="{0.4 + 4 * abs(k["weight"]) / wmax:.2f}"/>')
    for node in graph["nodes"]:
        (x, y), (shape, fill, r) = at(node["node_id"]), KINDS.get(node["feature_type"], OTHER)
        attrs = (f'class="node{" top" if node["feature_type"] in TOP else ""}" '
                 f'data-id="{_esc(node["node_id"])}" fill="{fill}"')
        if shape == "circle":
            parts.append(f'<circle {attrs} cx="{x:.1f}" cy="{y:.1f}" r="{r}"/>')
        elif shape == "diamond":
            parts.append(f'<polygon {attrs} points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} '
                         f'{x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}"/>')
        else:
            parts.append(f'<rect {attrs} x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}"/>')
    return "\n".join([*parts, "</svg>"])


def _data(graph: dict[str, Any]) -> str:
    """What the script needs, as JSON that can neither close the <script> nor spell a URL."""
    keep = ("clerp", "feature", "feature_type", "layer", "ctx_idx", "activation", "influence", "token_prob")
    data = {"tokens": graph["metadata"]["prompt_tokens"], "cards": graph["tcx"].get("cards", {}),
            "nodes": {n["node_id"]: {k: n.get(k) for k in keep} for n in graph["nodes"]}}
    return json.dumps(data).replace("/", "\\/").replace("<", "\\u003c")


def write_page(graph: dict[str, Any], path: Path) -> None:
    meta = graph["metadata"]
    legend = "".join(f'<span class="key"><i style="background:{fill};border-radius:{"50%" if s == "circle" else "0"}">'
                     f"</i>{kind}</span>" for kind, (s, fill, _) in KINDS.items() if kind != "target")
    write_text(path, f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tcx circuit · {_esc(meta.get("slug", ""))}</title>
<style>{STYLE}</style></head><body>
<header><h1>{_esc(meta["prompt"])}</h1>
<p class="summary">{_esc(_summary(graph))} · {len(graph["nodes"])} nodes, {len(graph["links"])} links
 (node threshold {meta.get("node_threshold", "—")}; scan {_esc(meta.get("scan", "—"))})</p>
<p class="legend">{legend}<span class="key"><b style="color:{POSITIVE}">━</b> positive</span>
<span class="key"><b style="color:{NEGATIVE}">━</b> negative</span> · hover a node for its card, click to pin</p>
</header>
<main><div id="plot">{_svg(graph)}</div><aside id="card"><p class="meta">hover a node</p></aside></main>
<script type="application/json" id="graph">{_data(graph)}</script>
<script>{SCRIPT}</script>
</body></html>
""")


def write_png(graph: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    lay = layout(graph)
    links, wmax = _links(graph, lay)
    fig, ax = plt.subplots(figsize=(12, 7), dpi=120)
    for x in lay.edges:
        ax.axvline(x, color="#eeeeee", lw=0.8, zorder=0)
    ax.add_collection(LineCollection(
        [[lay.xy[k["source"]], lay.xy[k["target"]]] for k in links], zorder=1, alpha=0.4,
        linewidths=[0.3 + 3 * abs(k["weight"]) / wmax for k in links],
        colors=[POSITIVE if k["weight"] >= 0 else NEGATIVE for k in links]))
    fig.subplots_adjust(left=0.06, right=0.84, bottom=0.2, top=0.93)
    # markers keep the page's proportions: a node's size in points is its px size times points per layout px
    scale = min(1.2, ax.get_position().width * fig.get_figwidth() * 72 / lay.edges[-1])
    by_kind: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for node in graph["nodes"]:
        by_kind[node["feature_type"]].append(lay.xy[node["node_id"]])
    for kind, points in sorted(by_kind.items(), key=lambda item: _rank(item[0])):
        shape, fill, r = KINDS.get(kind, OTHER)
        ax.scatter(*zip(*points, strict=True), marker={"circle": "o", "diamond": "D"}.get(shape, "s"),
                   s=(2 * r * scale) ** 2, c=fill, edgecolors="#222222" if kind in TOP else "#555555",
                   linewidths=1.5 if kind in TOP else 0.5, zorder=2, label=kind)
    tokens = [_token(t).replace("$", r"\$") for t in graph["metadata"]["prompt_tokens"]]
    ax.set_xticks(lay.centers()[: len(tokens)], tokens, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(lay.n_rows), lay.row_labels(), fontsize=8)
    ax.set_xlim(0, lay.edges[-1])
    ax.set_ylim(-0.6, lay.n_rows - 0.4)
    ax.set_title(_summary(graph).replace("$", r"\$"), fontsize=10)
    if by_kind:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
