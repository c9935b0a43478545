"""Feature dashboards and scores checked against brute force and against constructed features:
top contexts and band counts equal a full scan of the codes; a feature firing on exactly one token
scores 1.0 and a feature firing at random 0.5; the de-embedding of an encoder column W_E[t] ranks t
first; the whole command on the tiny model, with its bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tcx.errors import ConfigError
from tcx.features.collect import Batch, Reader, Scorer, contexts
from tcx.features.proxy import score_feature
from tests.test_circuits import tiny, transcoder

C = 3


def codes(seed: int, windows: int = 40, n_pos: int = 24, d_sae: int = 6, vocab: int = 30):
    """Sparse random codes over a wide range with a tie at the top, and the tokens under them."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (windows, n_pos), generator=g)
    z = torch.rand(windows, n_pos, d_sae, generator=g).pow(3) * torch.logspace(0, 3, d_sae)
    z = torch.where(torch.rand(z.shape, generator=g) < 0.15, z, 0.0)
    z[..., 0] = 0.0  # a dead feature
    z[:20, :, 2] = 0.0  # one that first fires in the third batch
    z[5, 7, 1] = z[9, 2, 1] = z.max() + 1  # a tie at the top
    return tokens, z


def read(tokens, z, batch: int = 7, **kw) -> Reader:
    r = Reader(z.shape[-1], int(tokens.max()) + 1, c=C, **kw)
    for s in range(0, len(z), batch):
        r.add(Batch(z[s:s + batch], tokens[s:s + batch], s))
    return r


def test_top_contexts_and_bands_equal_a_brute_force_scan():
    tokens, z = codes(0)
    r = read(tokens, z, top=5, per_band=3)
    flat = z.reshape(-1, z.shape[-1])
    for f in range(z.shape[-1]):
        held = r.top.key[f] > -torch.inf
        want = flat[:, f][flat[:, f] > 0].sort(descending=True).values[:5]
        assert torch.equal(r.top.key[f][held], want)
        loc = r.top.payload["loc"][f][held]
        assert torch.equal(flat[loc, f], want)  # the stored location holds the stored value
        w, p = loc // z.shape[1], loc % z.shape[1]
        for i in range(len(loc)):  # the stored context is the codes around it, NaN off the window
            for j, q in enumerate(range(p[i] - C, p[i] + C + 1)):
                got = r.top.payload["acts"][f][held][i, j]
                assert torch.isnan(got) if not 0 <= q < z.shape[1] else got == z[w[i], q, f]
        v = flat[:, f][flat[:, f] > 0].double()
        assert int(r.fired[f]) == len(v)
        if len(v) == 0:
            assert r.hist.shown_bands(f) == 0
            continue
        edges, counts = r.hist.band_edges(f), r.hist.band_counts(f)
        assert 6 <= len(counts) <= 10 and edges[-2] <= v.max() <= edges[-1]
        brute = [int(((v >= lo) & (v < hi)).sum()) for lo, hi in zip(edges, edges[1:], strict=False)]
        brute[-1] += int((v >= edges[-1]).sum())
        assert counts == brute and sum(counts) == len(v)  # exact shares: they sum to 1
        for band in range(len(counts)):  # every band sample lies in its band, as many as it holds
            g = f * r.hist.bands + band
            sample = r.bands.payload["value"][g][r.bands.key[g] > -torch.inf]
            assert len(sample) == min(3, counts[band])
            assert ((sample >= edges[band] - 1e-6) & (sample <= edges[band + 1] + 1e-6)).all()


def test_a_one_token_feature_scores_one_and_a_random_feature_one_half():
    g = torch.Generator().manual_seed(1)
    vocab, windows, n_pos = 40, 400, 32
    tokens = torch.randint(0, vocab, (windows, n_pos), generator=g)
    z = torch.zeros(windows, n_pos, 2)
    z[..., 0] = (tokens == 7).float() * 2.0                                          # exactly token 7
    z[..., 1] = (torch.rand(windows, n_pos, generator=g) < 0.03).float() * torch.rand(windows, n_pos, generator=g)
    read_half, test_half = tokens[::2], tokens[1::2]
    r = read(read_half, z[::2], batch=16, top=20)
    s = Scorer(r, positives=40, negatives=200)
    for i in range(0, len(test_half), 16):
        s.add(Batch(z[1::2][i:i + 16], test_half[i:i + 16], i))
    negatives = s.negative_contexts(test_half)
    gen = torch.Generator().manual_seed(0)
    peaks = [int(contexts(read_half, r.top.payload["loc"][f][:20], C)[i, C]) for f in range(2) for i in range(20)]
    expl, det, fuzz = score_feature(peaks[:20], s, test_half, 0, negatives, gen)
    assert expl == {7} and det == 1.0 and fuzz == 1.0
    expl, det, fuzz = score_feature(peaks[20:], s, test_half, 1, negatives, gen)
    assert abs(det - 0.5) < 0.2 and abs(fuzz - 0.5) < 0.2
    share = s.context_free()
    assert share[0] > 0.95 and share[1] < 0.1   # token identity explains feature 0 and not feature 1


def test_the_de_embedding_of_an_encoder_column_that_is_a_token_embedding_ranks_that_token_first(make_cfg):
    from tcx.features.weights import TokenMaps

    lm = tiny(make_cfg)
    d = transcoder(make_cfg, lm, 1, copy=False, d_sae=8)
    picked = torch.tensor([3, 50, 97, 120, 200, 65, 66, 250])
    # the tiny model's transcoders read ln2.hook_normalized: with attention cut and the norm's scale
    # frozen at 1, the map from the embedding is centring alone, so the de-embedding is (C W_E) (C W_E[t])
    centred = lm.bridge.W_E.double() - lm.bridge.W_E.double().mean(-1, keepdim=True)
    with torch.no_grad():
        d.dictionary.W_enc.copy_(centred[picked].T)
    top_ids, top_values, bottom_ids, _ = TokenMaps(lm, top=3).de_embedding(d, torch.arange(8))
    assert top_ids[:, 0].tolist() == picked.tolist()
    brute = centred @ centred[picked].T
    assert torch.allclose(top_values.double(), brute.topk(3, dim=0).values.T, rtol=1e-4)
    assert bottom_ids[:, 0].tolist() == brute.argmin(0).tolist()


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    """A smoke bank (transcoder + SAE on the tiny model), read once by the CLI; the tests share it."""
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR
    from tcx.training.run import train

    root = tmp_path_factory.mktemp("features")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", f"cache_dir={cache_dir}", "trainer.progress_bar=false",
                                          "trainer.max_tokens=8192", "trainer.eval_tokens=2048",
                                          "bank=[{name: transcoder}, {input_site: mlp_out, name: sae}]"])
    train(cfg, root / "bank")
    bank = root / "bank"
    out = tcx_features(f"dictionaries=[{bank / 'transcoder'},{bank / 'sae'}]", "max_tokens=4096",
                       f"hydra.run.dir={root / 'features'}")
    assert out.returncode == 0, out.stderr[-3000:]
    return bank, out.stdout


def tcx_features(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcx.cli.features", *args], capture_output=True, text=True)


def test_cli_writes_dashboards_scores_and_compare_columns(run, tmp_path):
    bank, stdout = run
    assert "tok/s" in stdout and "peak RSS" in stdout
    for member in ("transcoder", "sae"):
        doc = json.loads((bank / member / "features.json").read_text())
        assert doc["d_sae"] == len(doc["features"]) == 256
        assert ("de_embedding" in doc["features"][0]) == (member == "transcoder")
        live = [f for f in doc["features"] if not f["dead"]]
        assert live and all("logits" in f for f in live)  # the tiny model is causal
        for f in live:
            assert abs(sum(b["share"] for b in f["bands"]) - 1) < 1e-9
            values = [c["acts"][c["peak"]] for c in f["top"]]
            assert values == sorted(values, reverse=True) and values[0] == pytest.approx(f["max"], rel=1e-3)
        metrics = json.loads((bank / member / "metrics.json").read_text())
        assert {"detection", "fuzzing", "context_free", "l0"} <= set(metrics)
        assert metrics["detection"] == pytest.approx(doc["summary"]["detection"])
    compare = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(bank), "--out", str(tmp_path)],
                             capture_output=True, text=True)
    assert compare.returncode == 0 and "detection" in compare.stdout.splitlines()[0]


def test_bad_feature_requests(run, tmp_path):
    from safetensors.torch import load_file, save_file

    from tcx.features.config import FeaturesConfig
    from tcx.features.run import read_features

    bank, _ = run
    out = tcx_features(f"run={bank / 'transcoder'}", "top=0", "toppp=3")
    assert out.returncode == 1 and "toppp" in out.stderr  # a misspelt key fails at compose
    out = tcx_features(f"run={bank / 'transcoder'}", "top=0")
    assert out.returncode == 1 and "top=0 must be at least 1" in out.stderr
    settings = FeaturesConfig(max_tokens=2048)
    with pytest.raises(ConfigError, match=r"features=\[999\].*256 features"):
        read_features([bank / "transcoder"], settings, [3, 999])
    killed = tmp_path / "killed"  # a copy with feature 5 made dead by hand
    shutil.copytree(bank / "transcoder", killed)
    weights = load_file(killed / "dictionary.safetensors")
    weights["W_enc"][:, 5] = 0.0
    weights["b_enc"][5] = -1.0
    save_file(weights, killed / "dictionary.safetensors")
    metrics = (killed / "metrics.json").read_text()
    read_features([killed], settings, [5, 6])
    dead, other = json.loads((killed / "features_selected.json").read_text())["features"]
    assert (killed / "metrics.json").read_text() == metrics  # a selection's scores are not the run's
    assert dead == {"index": 5, "dead": True, "frequency": 0.0}  # said to be dead, nothing invented
    assert other["index"] == 6


def test_features_page_in_headless_chromium(browser, run):
    bank, _ = run
    doc = json.loads((bank / "transcoder" / "features.json").read_text())
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())
    page.goto((bank / "transcoder" / "features.html").as_uri())
    assert page.locator("#list li").count() == 256
    page.check("#hide-dead")
    live = [f for f in doc["features"] if not f["dead"]]
    assert page.locator("#list li").count() == len(live)
    page.select_option("#sort", "freq-desc")
    first = max(live, key=lambda f: f["frequency"])
    assert page.locator("#list li").first.get_attribute("data-index") == str(first["index"])
    page.fill("#search", str(first["index"]))
    page.locator(f'#list li[data-index="{first["index"]}"]').click()
    assert page.locator("#feature h2").inner_text() == f"feature {first['index']}"
    assert page.locator("#top .ctx").count() == len(first["top"])
    assert page.locator("#top .peak").count() == len(first["top"])  # the max token marked in each
    hover = page.locator("#top .peak").first.get_attribute("title")
    assert float(hover) == pytest.approx(first["top"][0]["acts"][first["top"][0]["peak"]])
    assert page.locator("#bands tr").count() == len(first["bands"])
    assert page.locator("#hist rect").count() == len(first["histogram"]["counts"])
    assert errors == []


def _doc(model: str, letter: str, n: int) -> dict:
    """A features.json by hand whose contexts spell only `letter`: rows can be told apart by eye alone."""
    vocab = {str(i): f"{letter}{i}" for i in range(10)}
    feats = []
    for i in range(n + 3):
        ctx = {"tokens": [1, 2, 3], "acts": [0.0, 2.5 + i, 0.5], "peak": 1}
        feats.append({"index": 100 + i, "dead": False, "frequency": 0.01, "fired": 50, "max": 2.5 + i, "top": [ctx] * 4,
                      "bands": [{"lo": 0, "hi": 1, "share": 1.0, "examples": [ctx]}]})
    feats.append({"index": 7, "dead": True, "frequency": 0.0})
    feats.append({"index": 8, "dead": False, "frequency": 1e-5, "fired": 1, "max": 1.0, "top": [], "bands": []})
    return {"model": model, "dictionary": letter, "vocab": vocab, "features": feats}


def test_the_blind_study_hides_identity_and_unblinds_every_row(tmp_path):
    from tcx.features.config import StudyConfig
    from tcx.features.study import make_study, score

    runs = []
    for letter in "AB":
        (tmp_path / letter).mkdir()
        (tmp_path / letter / "features.json").write_text(json.dumps(_doc("tiny", letter, 6)))
        runs.append(str(tmp_path / letter))
    made = make_study(StudyConfig(runs=runs, n=6, seed=3), tmp_path / "study")
    sheet = (tmp_path / "study" / "sheet.html").read_text()
    data = json.loads(sheet.split('id="data">')[1].split("</script>")[0])
    assert set(data) == {"study", "key_file", "rows"} and len(data["rows"]) == 12
    for row in data["rows"]:
        assert set(row) == {"row", "contexts"}
        for ctx in row["contexts"]:
            assert all(isinstance(t, str) and level in range(5) for t, level in ctx)  # no values
    for hidden in ('"index"', '"feature"', '"max"', '"frequency"', "2.5", str(tmp_path / "A"), '"A"'):
        assert hidden not in sheet
    # answer by what the rows show: letter A's rows yes, B's no, every third context-free
    answers = {}
    for i, row in enumerate(data["rows"]):
        letter = row["contexts"][0][0][0][0]
        answers[row["row"]] = {"label": "yes" if letter == "A" else "no", "context_free": i % 3 == 0}
    path = tmp_path / "answers.json"
    path.write_text(json.dumps({"study": data["study"], "key_file": data["key_file"], "answers": answers}))
    table = score(path)
    assert table[runs[0]]["yes"] == 6 and table[runs[0]]["no"] == 0
    assert table[runs[1]]["no"] == 6 and table[runs[1]]["yes"] == 0
    assert sum(r["context_free"] for r in table.values()) == 4
    lo, hi = table[runs[0]]["interpretable_ci95"]
    assert 0.5 < lo < 1.0 and hi == pytest.approx(1.0)
    assert made["rows"] == 12


def test_study_bad_inputs(tmp_path):
    from tcx.features.config import StudyConfig
    from tcx.features.study import make_study, score

    for letter, model in (("A", "tiny"), ("B", "minilm")):
        (tmp_path / letter).mkdir()
        (tmp_path / letter / "features.json").write_text(json.dumps(_doc(model, letter, 4)))
    with pytest.raises(ConfigError, match="different models"):
        make_study(StudyConfig(runs=[str(tmp_path / "A"), str(tmp_path / "B")], n=2), tmp_path / "s")
    with pytest.raises(ConfigError, match="fewer than n=40"):
        make_study(StudyConfig(runs=[str(tmp_path / "A")], n=40), tmp_path / "s")
    with pytest.raises(ConfigError, match="tcx-features run="):
        make_study(StudyConfig(runs=[str(tmp_path / "nowhere")], n=2), tmp_path / "s")
    made = make_study(StudyConfig(runs=[str(tmp_path / "A")], n=4), tmp_path / "s")
    key = json.loads(made["key"].read_text())
    good = {r: {"label": "maybe", "context_free": False} for r in key["rows"]}
    path = tmp_path / "answers.json"
    for answers, match in ((dict(good, r999={"label": "yes"}), "row 'r999'"),
                           (dict(good, r001={"label": "sure"}), "row 'r001'"),
                           ({k: v for k, v in good.items() if k != "r002"}, "r002")):
        path.write_text(json.dumps({"study": key["study"], "key_file": str(made["key"]), "answers": answers}))
        with pytest.raises(ConfigError, match=match):
            score(path)
    path.write_text(json.dumps({"study": "0000", "key_file": str(made["key"]), "answers": good}))
    with pytest.raises(ConfigError, match="another study"):
        score(path)
    out = tcx_features("score", str(tmp_path / "missing.json"))
    assert out.returncode == 1 and "missing.json" in out.stderr


def test_circuit_cards_show_what_tcx_features_read(run, tmp_path):
    bank, _ = run
    doc = json.loads((bank / "transcoder" / "features.json").read_text())
    done = subprocess.run([sys.executable, "-m", "tcx.cli.circuit", "progress=false",
                           f"transcoders={bank / 'transcoder'}", "prompt=the cat sat on the mat",
                           "target=logit_diff", "target.token=a", "target.other=b", "search.num_branches=3",
                           "prune.node_threshold=1.0", "prune.edge_threshold=1.0", f"hydra.run.dir={tmp_path / 'c'}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    graph = json.loads((tmp_path / "c" / "graph.json").read_text())
    cards = graph["tcx"]["cards"]
    assert cards
    by_index = {f["index"]: f for f in doc["features"]}
    for node_id, card in cards.items():
        feature = by_index[int(node_id.split("_")[1])]
        if feature["dead"]:  # fired on the prompt, never in the read text
            assert card["examples"] == []
            continue
        assert len(card["examples"]) == min(5, len(feature["top"]))
        top = feature["top"][0]
        peak = doc["vocab"][str(top["tokens"][top["peak"]])]
        assert f"⟦{peak}⟧" in card["examples"][0]
    # circuit-tracer's frontend files, where it looks for them, read by circuit-tracer's own model
    scan = graph["metadata"]["scan"]
    live = [n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"
            and not by_index[int(n["node_id"].split("_")[1])]["dead"]]
    files = {int(p.stem): p for p in (tmp_path / "c" / "features" / scan).glob("*.json")}
    assert live and set(files) == {n["feature"] for n in live}
    some = json.loads(files[live[0]["feature"]].read_text())
    assert some["index"] == int(live[0]["node_id"].split("_")[1])
    assert some["examples_quantiles"][0]["examples"][0]["train_token_ind"] == by_index[some["index"]]["top"][0]["peak"]
    if os.environ.get("TCX_CIRCUIT_TRACER_PYTHON"):
        check = ("import sys, pathlib; from circuit_tracer.frontend.feature_models import Model; "
                 "[Model.model_validate_json(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob('*.json')]")
        done = subprocess.run([os.environ["TCX_CIRCUIT_TRACER_PYTHON"], "-c", check,
                               str(tmp_path / "c" / "features" / scan)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]


def test_a_dictionary_in_another_format_has_its_notes_found_by_circuit_cards(make_cfg, tmp_path):
    """tcx-features writes `features_<name>.json` beside a file of another format (the paper's
    pickle); the circuits' cards read their notes from the same place."""
    from tcx.runs import open_runs
    from tcx.runs.feature_notes import FeatureNotes
    from tests.test_runs import copy_of_tiny_mlp, paper_pickle

    path = tmp_path / "final_sparse_autoencoder_tiny_blocks.0.ln2.hook_normalized_256.pt"
    paper_pickle(path, copy_of_tiny_mlp(make_cfg, 0), model_name="tiny", d_in=64,
                 hook_point="blocks.0.ln2.hook_normalized", out_hook_point="blocks.0.hook_mlp_out")
    out = tcx_features(f"dictionaries=[{path}]", "max_tokens=2048", f"hydra.run.dir={tmp_path / 'f'}")
    assert out.returncode == 0, out.stderr[-3000:]
    (opened,) = open_runs([path]).dictionaries
    written = opened.features_file()
    assert written.parent == tmp_path and written.is_file() and written.with_suffix(".html").is_file()
    doc = json.loads(written.read_text())
    live = next(f["index"] for f in doc["features"] if not f["dead"])
    card = FeatureNotes(written).circuit_tracer(live)
    assert card is not None and card["examples_quantiles"][0]["examples"]


def test_help_shows_the_sub_commands():
    """Hydra's --help lists config groups only: `study` and `score` were nowhere; `score --help`
    tried to read a file named --help."""
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "tcx.cli.features", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "tcx-features study" in shown.stdout and "tcx-features score" in shown.stdout
    score = subprocess.run([sys.executable, "-m", "tcx.cli.features", "score", "--help"],
                           capture_output=True, text=True)
    assert score.returncode == 0 and "usage: tcx-features score <answers.json>" in score.stdout
