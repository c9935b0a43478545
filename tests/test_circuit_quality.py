"""Circuits across a sweep (`tcx-circuit quality`): the scores against math, the stability measures
against a dictionary that is provably the same one (its features permuted), and the command end to
end on trained runs, through to tcx-compare's columns."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tcx.circuits.config import QualityConfig
from tcx.circuits.quality import compare_runs, explained, focus, score_run
from tcx.circuits.stability import average_ranks, decoder_matches, rank_correlation
from tcx.circuits.targets.direction import DirectionConfig
from tcx.circuits.targets.logit import LogitDiffConfig
from tcx.runs.record import OpenedDictionary
from tests.test_circuits import tiny, transcoder

TARGET = LogitDiffConfig(token="a", other="b")


def settings(**kw) -> QualityConfig:
    return QualityConfig(runs="-", prompts=kw.pop("prompts", ["cat", "dog 7"]), target=kw.pop("target", TARGET),
                         progress=False,
                         max_feature_nodes=kw.pop("max_feature_nodes", 64), **kw)


def permuted(d: OpenedDictionary, perm: torch.Tensor) -> OpenedDictionary:
    """The same dictionary with its features renumbered: feature i of the copy is feature perm[i]."""
    other = copy.deepcopy(d.dictionary)
    with torch.no_grad():
        other.W_enc.copy_(d.dictionary.W_enc[:, perm])
        other.b_enc.copy_(d.dictionary.b_enc[perm])
        other.W_dec.copy_(d.dictionary.W_dec[perm])
    return OpenedDictionary(other, dict(d.meta), d.source.with_name(d.source.name + "-permuted"), d.format)


def test_focus_is_the_fewest_features_holding_the_share_and_explained_is_their_layer_share():
    influence = torch.tensor([100.0, 1.0, 3.0, 5.0, 1.0])
    mine = torch.tensor([False, True, True, True, True])  # the first is an error node: never in the focus
    assert focus(influence, mine, 0.8).tolist() == [False, False, True, True, False]  # 5 + 3 = 8 of 10
    assert int(focus(influence, mine, 0.81).sum()) == 3 and int(focus(influence, mine, 1.0).sum()) == 4
    assert not focus(influence, torch.zeros(5, dtype=torch.bool), 0.8).any()
    kinds = ["error", "feature", "feature", "pruned", "feature"]
    layers = [2, 2, 2, 2, 1]  # the last feature is another layer's
    assert explained(torch.tensor([1.0, 2.0, 3.0, 4.0, 50.0]), kinds, layers, 2) == pytest.approx(5 / 10)


def test_rank_correlation_is_spearmans_with_average_ranks():
    assert average_ranks(torch.tensor([3.0, 1.0, 1.0, 2.0])).tolist() == [3.0, 0.5, 0.5, 2.0]
    x = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.0, 5.0])
    assert rank_correlation(x, x ** 3 + 1) == pytest.approx(1.0)
    assert rank_correlation(x, -x) == pytest.approx(-1.0)
    # by hand: ranks [1, 0, 2] and [0, 1, 2] -> centred [0, -1, 1], [-1, 0, 1] -> 1 / 2
    assert rank_correlation(torch.tensor([2.0, 1.0, 3.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.5)
    assert rank_correlation(torch.tensor([1.0]), torch.tensor([2.0])) is None
    assert rank_correlation(torch.ones(3), torch.arange(3.0)) is None


def test_decoder_matches_find_a_permutation_and_refuse_far_features():
    W = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    found = decoder_matches(W, 3.0 * W[perm], torch.arange(50), 0.99)  # scale does not matter
    assert all(perm[j] == i for i, j in found.items()) and len(found) == 50
    assert decoder_matches(W, torch.randn(50, 16, generator=torch.Generator().manual_seed(2)), torch.arange(50),
                           0.99) == {}


def test_copies_of_every_mlp_explain_the_whole_target(make_cfg):
    """With the MLP copied exactly at both layers there is no error: replacement and completeness are 1.
    With the second layer left as a real MLP, its share counts as unexplained."""
    lm = tiny(make_cfg)
    run, context = transcoder(make_cfg, lm, 0), transcoder(make_cfg, lm, 1)
    full, _ = score_run(lm, run, [context], settings(max_feature_nodes=10_000))
    for key in ("circuit_replacement", "circuit_completeness", "circuit_explained"):
        assert full[key] == pytest.approx(1.0, abs=1e-9), key
    alone, _ = score_run(lm, run, [], settings(max_feature_nodes=10_000))
    assert alone["circuit_replacement"] < 0.99 and alone["circuit_explained"] == pytest.approx(1.0, abs=1e-9)
    noisy, _ = score_run(lm, transcoder(make_cfg, lm, 0, noise=0.05), [context], settings(max_feature_nodes=10_000))
    assert noisy["circuit_explained"] < 0.999  # its error carries some of the MLP's influence
    assert all(1 <= p["nodes80"] <= p["active_features"] for p in full["prompts"])


def test_a_permuted_copy_makes_the_same_circuit(make_cfg):
    """Renumbering a dictionary's features changes nothing: the same scores, every feature node
    matched (overlap 1), the same edges (rank correlation 1). Another dictionary overlaps less."""
    lm = tiny(make_cfg)
    a = transcoder(make_cfg, lm, 0, noise=0.02)
    b = permuted(a, torch.randperm(a.dictionary.d_sae, generator=torch.Generator().manual_seed(3)))
    other = transcoder(make_cfg, lm, 0, noise=0.02)
    context = [transcoder(make_cfg, lm, 1, noise=0.02)]
    (ra, ca), (rb, cb), (ro, co) = (score_run(lm, d, context, settings()) for d in (a, b, other))
    for key in ("circuit_explained", "circuit_replacement", "circuit_completeness", "circuit_nodes80"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-9)
    same = compare_runs(a, b, ca, cb, 0.99)
    assert same["node_overlap"] == 1.0
    assert same["edge_rank_correlation"] == pytest.approx(1.0, abs=1e-9)
    assert all(p["edges"] > 10 and min(p["focus"]) >= 2 for p in same["prompts"])
    different = compare_runs(a, other, ca, co, 0.99)
    assert different["node_overlap"] < 1.0 and different["edge_rank_correlation"] < 0.999


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    """Two trained transcoders (different L1) and a replica of the first under another seed whose
    features are the first's permuted: the same dictionary, which must be found stable."""
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR
    from tcx.training.run import train

    root = tmp_path_factory.mktemp("quality")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=smoke", f"cache_dir={cache_dir}", "trainer.progress_bar=false", "trainer.max_tokens=16384",
            "trainer.eval_tokens=2048", "layer=0", "bank=[{l1_coeff: 0.1, name: a}, {l1_coeff: 1.0, name: b},"
            " {dictionary: sae, name: sae}]"])
    train(cfg, root / "0")
    replica = root / "0" / "a-seed1"
    shutil.copytree(root / "0" / "a", replica)
    weights = load_file(str(replica / "dictionary.safetensors"))
    perm = torch.randperm(weights["b_enc"].numel(), generator=torch.Generator().manual_seed(0))
    weights.update(W_enc=weights["W_enc"][:, perm].contiguous(), b_enc=weights["b_enc"][perm].contiguous(),
                   W_dec=weights["W_dec"][perm].contiguous())
    save_file(weights, str(replica / "dictionary.safetensors"))
    meta = json.loads((replica / "dictionary.json").read_text())
    (replica / "dictionary.json").write_text(json.dumps({**meta, "seed": 1}))
    config = yaml.safe_load((replica / "config.yaml").read_text())
    (replica / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 1}))
    return root


def test_quality_command_scores_a_sweep_and_tcx_compare_shows_it(sweep, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "tcx.cli.circuit", "quality", f"runs={sweep}", "progress=false",
                           "prompts=[cat, dog 7]", "target=logit_diff", "target.token=a", "target.other=b",
                           "max_feature_nodes=64", f"hydra.run.dir={tmp_path / 'q'}"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "q" / "circuit_quality.json").read_text())
    assert len(doc["runs"]) == 3 and len(doc["pairs"]) == 3 and list(doc["skipped"]) == [str(sweep / "0" / "sae")]
    assert "circuit_explained" not in json.loads((sweep / "0" / "sae" / "metrics.json").read_text())
    pair = next(p for p in doc["pairs"] if {p["a"], p["b"]} == {str(sweep / "0" / "a"), str(sweep / "0" / "a-seed1")})
    assert pair["differs"] == {"seed": [0, 1]} or pair["differs"] == {"seed": [1, 0]}
    assert pair["node_overlap"] == 1.0 and pair["edge_rank_correlation"] == pytest.approx(1.0, abs=1e-6)
    metrics = {name: json.loads((sweep / "0" / name / "metrics.json").read_text()) for name in ("a", "a-seed1", "b")}
    assert metrics["a"]["circuit_stability"] == 1.0 and metrics["b"]["circuit_stability"] is None  # cleared, not stale
    assert metrics["a"]["circuit_replacement"] == pytest.approx(metrics["a-seed1"]["circuit_replacement"], rel=1e-5)
    assert all(0 < m["circuit_explained"] <= 1 and m["circuit_nodes80"] >= 1 for m in metrics.values())
    assert "l0" in metrics["a"] and "recovered_mean" in metrics["a"]  # merged, not replaced
    assert "node_overlap" in done.stdout and "\nseed " in done.stdout

    shown = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), "--out", str(tmp_path)],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr[-3000:]
    header = shown.stdout.splitlines()[0]
    assert all(k in header for k in ("circuit_explained", "circuit_nodes80", "circuit_replacement",
                                     "circuit_stability"))
    assert (tmp_path / "frontier_circuit_explained.png").is_file()
    assert (tmp_path / "frontier_circuit_nodes80.png").is_file()


def test_quality_refuses_an_empty_prompt_set(sweep, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tcx.cli.circuit", "quality", f"runs={sweep}", "prompts=[]",
                           f"hydra.run.dir={tmp_path / 'q'}"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and "prompts= is empty" in done.stderr and "Traceback" not in done.stderr


def test_runs_whose_features_carry_nothing_to_the_target_get_no_scores(make_cfg, tmp_path):
    """A probe on layer 0's output sits upstream of layer-1 runs: no feature node of theirs holds any
    influence. nodes80 is then undefined (0 would read as the most readable circuit), and so is the
    overlap of two unrelated runs (1.0 would read as perfectly stable)."""
    lm = tiny(make_cfg)
    torch.save({"direction": torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)},
               tmp_path / "probe.pt")
    target = DirectionConfig(path=str(tmp_path / "probe.pt"), hook="blocks.0.hook_out")
    cfg = settings(target=target)
    a, b = transcoder(make_cfg, lm, 1, noise=0.05), transcoder(make_cfg, lm, 1, noise=0.5)
    (ra, ca), (rb, cb) = score_run(lm, a, [], cfg), score_run(lm, b, [], cfg)
    for r in (ra, rb):
        assert r["circuit_nodes80"] is None and r["circuit_explained"] == 0.0
        assert all(p["nodes80"] is None for p in r["prompts"])
    pair = compare_runs(a, b, ca, cb, 0.7)
    assert pair["node_overlap"] is None and all(p["node_overlap"] is None for p in pair["prompts"])
