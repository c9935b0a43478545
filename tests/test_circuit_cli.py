"""`tcx-circuit` end to end from the command line, on the paper's file format (exact copies of the
tiny model's MLPs): every file written, readable by circuit-tracer's own schema, and bad input
answered with one paragraph."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.test_peers import circuit_tracer_python
from tests.test_runs import copy_of_tiny_mlp, paper_pickle


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR

    def make_cfg(*overrides):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("train", overrides=["experiment=smoke", *overrides])

    folder = tmp_path_factory.mktemp("paper")
    for layer in (0, 1):
        paper_pickle(folder / f"final_sparse_autoencoder_tiny_blocks.{layer}.ln2.hook_normalized_256.pt",
                     copy_of_tiny_mlp(make_cfg, layer), model_name="tiny", d_in=64,
                     hook_point=f"blocks.{layer}.ln2.hook_normalized", out_hook_point=f"blocks.{layer}.hook_mlp_out")
    return folder


def circuit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcx.cli.circuit", "progress=false", *args],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_tcx_circuit_writes_every_file(copies, tmp_path):
    out = tmp_path / "c"
    done = circuit(f"transcoders={copies}", "prompt=cat 12", "target=logit_diff", "target.token=a",
                   "target.other=b", "search.num_branches=5", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top paths:" in done.stdout and "replacement" in done.stdout
    for name in ("graph.json", "paths.json", "graph.safetensors", "paths.txt", "circuit.html", "paths.html",
                 "circuit.png", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["transcoder_layers"] == [0, 1] and summary["replay_error"] < 1e-5
    assert summary["row_residual"] < 1e-3 * max(1.0, abs(summary["target_value"]))
    doc = json.loads((out / "graph.json").read_text())
    ids = {n["node_id"] for n in doc["nodes"]}
    assert {ln["source"] for ln in doc["links"]} <= ids and {ln["target"] for ln in doc["links"]} <= ids
    assert sum(n["is_target_logit"] for n in doc["nodes"]) == 1
    (target,) = [n["clerp"] for n in doc["nodes"] if n["is_target_logit"]]  # what it predicts, not reads
    assert target.startswith("logit('a') - logit('b') at @"), target
    assert any(n["feature_type"] == "cross layer transcoder" for n in doc["nodes"])
    assert summary["kept_feature_nodes"] == sum(n["feature_type"] == "cross layer transcoder" for n in doc["nodes"])
    assert doc["metadata"]["prompt_tokens"][0] == "<bos>"
    assert len((out / "paths.txt").read_text().splitlines()) == 5
    html = (out / "circuit.html").read_text()
    assert "http://" not in html and "https://" not in html
    tensors = load_file(str(out / "graph.safetensors"))
    assert tensors["adjacency"].shape[0] == tensors["adjacency"].shape[1] == len(tensors["nodes"])
    # the copies are exact: error nodes carry nothing into the target
    with safe_open(str(out / "graph.safetensors"), "pt") as f:
        kinds = json.loads(f.metadata()["kinds"])
    errors = tensors["nodes"][:, 0] == kinds.index("error")
    assert errors.sum() == 2 * len(doc["metadata"]["prompt_tokens"])
    assert tensors["adjacency"][:, errors].abs().max() < 1e-4


@pytest.mark.parametrize(("args", "message"), [
    (["target.token=ab"], "target.token='ab' is 2 tokens"),  # named as tcx-circuit takes it
    (["target=direction", "target.path=/nonexistent/probe.pt"], "no such file"),
    # the replay's name for a pre-norm MLP's input, which the model records under no hook
    (["target=direction", "target.path=/nonexistent/probe.pt", "target.hook=blocks.0.hook_mlp_in"],
     "target.hook='blocks.0.hook_mlp_in' is not a hook"),
    (["target=logit_diff", "target.token=a"], "target.other: required, and not given"),
    (["target=feature", "target.layer=0"], "target.index: required, and not given"),
    (["target=feature", "target.layer=0", "target.index=x"], "target.index"),  # a wrong type, at compose time
    (["target=logit", "target.other=b"], "Could not override 'target.other'"),  # logit_diff's key
    (["target=nonsense"], "Could not find 'target/nonsense'"),
    (["target=logit_diff", "target.token=a", "target.other=null"], "full_key: target.other"),  # not a plain logit
    (["target.kind=logit_diff"], "the target is a config group now: target=logit_diff"),  # the old spelling
    (["prune.node_threshold=2"], "node_threshold must be in"),
])
def test_bad_input_is_one_paragraph(copies, tmp_path, args, message):
    done = circuit(f"transcoders={copies}", "prompt=cat", f"hydra.run.dir={tmp_path / 'c'}", *args)
    assert done.returncode == 1, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr


def test_graph_json_is_valid_for_circuit_tracer(copies, tmp_path):
    python = circuit_tracer_python()
    out = tmp_path / "c"
    assert circuit(f"transcoders={copies}", "prompt=cat 1", f"hydra.run.dir={out}").returncode == 0
    check = ("import json, sys\nfrom circuit_tracer.frontend.graph_models import Model\n"
             "for p in sys.argv[1:]:\n    m = Model(**json.load(open(p)))\n    print(len(m.nodes), len(m.links))\n")
    done = subprocess.run([python, "-c", check, str(out / "graph.json"), str(out / "paths.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
