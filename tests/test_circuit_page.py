"""circuit.html and circuit.png from a small hand-made graph.json (a fixture for the drawing only, not
the output of a real attribution). The browser test runs the page in Debian's headless Chromium via
Playwright; it is skipped without Chromium, except in CI, where .ci/run installs it."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tcx.circuits.page import layout, write_page, write_png

TOKENS = ["<bos>", " The", " capital", " of", " France", " is"]


def _node(node_id: str, kind: str, layer: str, pos: int, clerp: str, feature: int = 0,
          activation: float | None = None, influence: float | None = None) -> dict[str, Any]:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos, "feature_type": kind,
            "token_prob": 0.42 if kind == "logit" else 0.0, "is_target_logit": kind == "logit", "run_idx": 0,
            "reverse_ctx_idx": 0, "jsNodeId": node_id, "clerp": clerp, "influence": influence,
            "activation": activation}


def _card(title: str, top: list[str], bottom: list[str], up: list[str], down: list[str]) -> dict[str, Any]:
    return {"title": title, "lines": [f"{title}: fires on country names"],
            "de_embedding": {"top": [[t, 1.0 - i / 10] for i, t in enumerate(top)],
                             "bottom": [[t, -1.0 + i / 10] for i, t in enumerate(bottom)]},
            "upstream": [[u, 0.5] for u in up], "downstream": [[d, 0.25] for d in down]}


@pytest.fixture
def graph() -> dict[str, Any]:
    """A 2-layer model, prompt "The capital of France is", target the logit " Paris"."""
    nodes = [
        _node("E_2", "embedding", "E", 2, "Emb: ' capital'"),
        _node("E_4", "embedding", "E", 4, "Emb: ' France'"),
        _node("0_12_4", "cross layer transcoder", "0", 4, "France", 12, 3.1, 0.6),
        _node("0_7_4", "cross layer transcoder", "0", 4, "countries </script> see https://example.org", 7, 1.2, 0.2),
        _node("err_0_4", "mlp reconstruction error", "0", 4, "Err: mlp 0", activation=0.8, influence=0.1),
        _node("attn_1_3_2", "attention", "1", 2, "L1 head 3 from ' capital'", 3, 0.9, 0.3),
        _node("1_3_5", "cross layer transcoder", "1", 5, "say a capital", 3, 2.4, 0.8),
        _node("pruned_1_5", "pruned", "1", 5, "the rest of layer 1", influence=0.05),
        _node("logit_5", "logit", "3", 5, "' Paris' (p=0.420)", 9834, None, 1.0),
    ]
    links = [("E_4", "0_12_4", 2.0), ("E_4", "0_7_4", 0.7), ("E_2", "attn_1_3_2", 0.5),
             ("attn_1_3_2", "1_3_5", 0.9), ("0_12_4", "1_3_5", 1.5), ("0_7_4", "1_3_5", -0.6),
             ("err_0_4", "1_3_5", 0.3), ("1_3_5", "logit_5", 3.0), ("0_12_4", "logit_5", -1.1),
             ("pruned_1_5", "logit_5", 0.2)]
    cards = {"0_12_4": _card("L0 #12 France", [" Paris", " French"], [" Berlin"], ["Emb: ' France'"],
                             ["say a capital", "' Paris'"]),
             "1_3_5": _card("L1 #3 say a capital", [" Paris", " Rome", " Madrid"], [" the"], ["France"], ["' Paris'"]),
             "logit_5": _card("logit ' Paris'", [], [], ["say a capital", "France"], [])}
    return {
        "metadata": {"slug": "capital-france", "scan": "tcx-test", "transcoder_list": ["t0", "t1"],
                     "prompt_tokens": TOKENS, "prompt": "".join(TOKENS[1:]), "node_threshold": 0.8,
                     "schema_version": 1},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": [{"source": s, "target": t, "weight": w} for s, t, w in links],
        "tcx": {"target": {"kind": "logit", "label": "' Paris'", "value": 7.25},
                "scores": {"replacement": 0.734, "completeness": 0.912}, "n_layers": 2, "cards": cards},
    }


def test_layout_rows_columns_and_cells(graph):
    lay = layout(graph)
    rows = {n["node_id"]: lay.xy[n["node_id"]][1] for n in graph["nodes"]}
    assert rows["E_4"] == 0 and rows["0_12_4"] == 1 and rows["1_3_5"] == 2 and rows["logit_5"] == 3
    assert lay.n_rows == 4 and lay.row_labels() == ["E", "L0", "L1", "target"]
    assert len(lay.edges) == len(TOKENS) + 1
    cell = sorted(lay.xy[i][0] for i in ("0_12_4", "0_7_4", "err_0_4"))  # one (layer, position) cell
    assert len(set(cell)) == 3 and lay.edges[4] < cell[0] and cell[-1] < lay.edges[5]
    assert lay.xy["0_12_4"][0] < lay.xy["0_7_4"][0] < lay.xy["err_0_4"][0]  # features first, by influence


def test_page_is_self_contained_and_complete(graph, tmp_path):
    path = tmp_path / "circuit.html"
    write_page(graph, path)
    assert os.listdir(tmp_path) == ["circuit.html"]  # written atomically: no temp file left behind
    source = path.read_text()
    assert "http://" not in source and "https://" not in source  # not even the one inside a clerp
    assert "<script src" not in source and "<link" not in source
    assert len(re.findall(r'class="node[ "]', source)) == len(graph["nodes"])
    assert len(re.findall(r'class="link ', source)) == len(graph["links"])
    embedded = re.search(r'<script type="application/json" id="graph">(.*?)</script>', source, re.S)
    data = json.loads(embedded.group(1))  # the clerp's "</script>" did not end the block early
    assert data["cards"] == graph["tcx"]["cards"]
    assert data["nodes"]["0_7_4"]["clerp"] == "countries </script> see https://example.org"
    assert "0.734" in source and "0.912" in source and "capital of France" in source


def test_png_is_drawn(graph, tmp_path):
    from PIL import Image, ImageStat

    path = tmp_path / "circuit.png"
    write_png(graph, path)
    assert os.listdir(tmp_path) == ["circuit.png"]
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (1440, 840)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10, "the PNG looks blank"


def test_empty_graph_still_draws(graph, tmp_path):
    graph = {**graph, "nodes": [], "links": [], "tcx": {**graph["tcx"], "cards": {}}}
    write_page(graph, tmp_path / "circuit.html")
    write_png(graph, tmp_path / "circuit.png")
    assert sorted(os.listdir(tmp_path)) == ["circuit.html", "circuit.png"]


def test_circuit_page_in_headless_chromium(browser, graph, tmp_path: Path):
    from PIL import Image, ImageStat

    write_page(graph, tmp_path / "circuit.html")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    requested: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def only_local(route):  # any network request would fail: the page must need none
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            requested.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.goto((tmp_path / "circuit.html").as_uri())
    assert page.locator("#graph-svg .node").count() == len(graph["nodes"])
    assert page.locator("#graph-svg .link").count() == len(graph["links"])
    shot = Image.open(io.BytesIO(page.locator("#graph-svg").screenshot())).convert("L")
    assert ImageStat.Stat(shot).stddev[0] > 10, "the graph looks blank"

    page.hover('.node[data-id="0_12_4"]')  # a feature with a card: title, lines, de-embedding, neighbours
    card = page.locator("#card").inner_text()
    for text in ("L0 #12 France", "fires on country names", "Paris", "French", "Berlin", "say a capital", "3.10"):
        assert text in card, f"{text!r} missing from the card: {card!r}"
    assert page.locator(".link.on").count() == 3  # its edges light up: one in, two out
    page.hover('.node[data-id="err_0_4"]')  # no card: its clerp, activation and influence
    card = page.locator("#card").inner_text()
    assert "Err: mlp 0" in card and "0.800" in card and "0.100" in card and "Berlin" not in card
    assert page.locator(".link.on").count() == 1

    page.click('.node[data-id="1_3_5"]')  # a click pins the card: hovering elsewhere keeps it
    page.hover('.node[data-id="E_2"]')
    assert "L1 #3 say a capital" in page.locator("#card").inner_text()
    assert page.locator(".link.on").count() == 5
    assert errors == [] and requested == []


def test_a_path_pages_nodes_show_their_features_cards(browser, graph, tmp_path: Path):
    """paths.html names each node by its route from the target (`<node>~<k>`, a node may be reached
    twice); its card is the node's own."""
    route = {n["node_id"]: f"{n['node_id']}~{k}" for k, n in enumerate(graph["nodes"])}
    for n in graph["nodes"]:
        n["node_id"] = n["jsNodeId"] = route[n["node_id"]]
    for link in graph["links"]:
        link["source"], link["target"] = route[link["source"]], route[link["target"]]
    write_page(graph, tmp_path / "paths.html")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto((tmp_path / "paths.html").as_uri())
    page.hover(f'.node[data-id="{route["0_12_4"]}"]')
    card = page.locator("#card").inner_text()
    assert "L0 #12 France" in card and "Berlin" in card, card
