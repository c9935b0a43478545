"""Exports to SAELens, sparsify and circuit-tracer, and reading them back: tcx -> format -> tcx is the
same dictionary; kinds a format cannot express are refused by name; damaged folders are named."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from tcx.config import build_node
from tcx.dictionaries.io import save_dictionary
from tcx.errors import CheckpointError, ConfigError
from tcx.runs import open_runs
from tcx.runs.export import export
from tests.test_runs import rel, trained_like

GEN = torch.Generator().manual_seed(5)


def run_dir(make_cfg, path, name: str, layer: int = 1, sae: bool = False, **cfg_overrides):
    """A tcx run dir on the tiny model: a perturbed `name` dictionary with scales far from 1."""
    overrides = [f"dictionary={name}", f"layer={layer}", *(["dictionary.input_site=mlp_out"] if sae else []),
                 *(f"dictionary.{k}={v}" for k, v in cfg_overrides.items())]
    cfg = make_cfg(*overrides)
    spec = build_node(cfg.model, "model")
    d = trained_like(lambda *o: make_cfg(*overrides, *o), name, d_in=spec.d_model, d_out=spec.d_model)
    if hasattr(d, "threshold") and d.threshold.dim() == 0:  # BatchTopK: an inference threshold
        d.threshold.fill_(0.05)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_dictionary(d, path, {"model": spec.name, "layer": layer, "training_tokens": 4096, "seed": 3,
                              "input_hook": spec.hook(d.cfg.input_site, layer),
                              "target_hook": spec.hook(d.cfg.target_site, layer)})
    return path


def same_outputs(a, b) -> None:
    x = 3 * torch.randn(200, a.dictionary.d_in, generator=GEN)
    za, ya = a.dictionary.encode_decode(x)
    zb, yb = b.dictionary.encode_decode(x)
    assert (za != 0).float().mean() > 0.005, "nothing fires: the comparison would be empty"
    assert rel(yb, ya) < 1e-6 and rel(zb, za) < 1e-6
    assert (a.input_hook, a.target_hook) == (b.input_hook, b.target_hook)


def same_settings(original, back) -> None:
    """What it was trained with (l1_coeff, expansion_factor, ...) comes back, not the kind's defaults."""
    config = back.meta["config"]
    assert back.meta["seed"] == original.meta["seed"] == 3
    assert {k: v for k, v in original.meta["config"].items() if k in config} == {
        k: config[k] for k in original.meta["config"] if k in config}


CASES = [("saelens", "transcoder", False), ("saelens", "sae", False), ("saelens", "topk", True),
         ("saelens", "jumprelu", False), ("saelens", "batchtopk", False), ("saelens", "gated", True),
         ("sparsify", "topk", False), ("sparsify", "topk", True), ("sparsify", "skip_transcoder", False)]


@pytest.mark.parametrize(("fmt", "kind", "sae"), CASES)
def test_round_trip_through_each_format_is_the_same_dictionary(make_cfg, tmp_path, fmt, kind, sae):
    run = run_dir(make_cfg, tmp_path / "run", kind, sae=sae)
    export([run], fmt, tmp_path / "out")
    (original,), (back,) = open_runs([run]).dictionaries, open_runs([tmp_path / "out"]).dictionaries
    assert back.format == fmt and back.meta["model"] == "tiny"
    same_outputs(original, back)
    same_settings(original, back)
    if fmt == "saelens":  # tensors stored as they are: bit-identical
        assert torch.equal(back.dictionary.W_dec, original.dictionary.W_dec)
        assert torch.equal(back.dictionary.W_enc, original.dictionary.W_enc)
        sparsity = load_file(str(tmp_path / "out" / "sparsity.safetensors"))["sparsity"]
        assert sparsity.shape == (original.dictionary.d_sae,) and (sparsity <= 0).all()
        cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
        assert cfg["metadata"]["sae_lens_version"].startswith("6") and cfg["normalize_activations"] == "none"
        assert cfg["metadata"]["hook_name"] == original.input_hook


def test_circuit_tracer_set_round_trips_every_layer(make_cfg, tmp_path):
    runs = [run_dir(make_cfg, tmp_path / "sweep" / f"L{i}", kind, layer=i)
            for i, kind in enumerate(["transcoder", "jumprelu"])]
    export([tmp_path / "sweep"], "circuit-tracer", tmp_path / "ct")
    config = (tmp_path / "ct" / "config.yaml").read_text()
    assert "model_kind: transcoder_set" in config and "feature_input_hook: ln2.hook_normalized" in config
    layer1 = load_file(str(tmp_path / "ct" / "layer_1.safetensors"))
    assert layer1["W_enc"].shape == (256, 64) and "activation_function.threshold" in layer1
    back = open_runs([tmp_path / "ct"]).dictionaries
    assert [d.layer for d in back] == [0, 1]
    for run, b in zip(runs, back, strict=True):
        same_outputs(open_runs([run]).dictionaries[0], b)
        same_settings(open_runs([run]).dictionaries[0], b)


def test_kinds_a_format_cannot_express_are_refused_naming_the_ones_that_can(make_cfg, tmp_path):
    topk_tc = run_dir(make_cfg, tmp_path / "topk", "topk")
    with pytest.raises(ConfigError, match=r"format=saelens cannot express .*no TopK transcoder.*that can: sparsify"):
        export([topk_tc], "saelens", tmp_path / "a")
    relu = run_dir(make_cfg, tmp_path / "relu", "transcoder")
    with pytest.raises(ConfigError, match=r"format=sparsify cannot express .*Formats that can: saelens"):
        export([relu], "sparsify", tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"every layer of tiny \(0\.\.1\); layers \[0\] have none"):
        export([relu], "circuit-tracer", tmp_path / "c")
    assert not any(p.name.startswith(("a", "b", "c", ".a", ".b", ".c")) for p in tmp_path.iterdir()), \
        "a refused export leaves nothing behind"


def test_a_tensor_of_the_wrong_shape_names_tensor_file_and_shapes(make_cfg, tmp_path):
    export([run_dir(make_cfg, tmp_path / "run", "transcoder")], "saelens", tmp_path / "out")
    weights = tmp_path / "out" / "sae_weights.safetensors"
    t = load_file(str(weights))
    t["W_dec"] = t["W_dec"][:, :10].contiguous()
    save_file(t, str(weights))
    with pytest.raises(CheckpointError, match=r"sae_weights\.safetensors: tensor 'W_dec' has shape \[256, 10\], "
                                              r"expected \[256, 64\]"):
        open_runs([tmp_path / "out"])


def test_a_foreign_folder_without_a_known_model_asks_for_one(make_cfg, tmp_path):
    export([run_dir(make_cfg, tmp_path / "run", "transcoder")], "saelens", tmp_path / "out")
    (tmp_path / "out" / "tcx.json").unlink()  # as SAELens would publish it
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = "somebody/unknown-model"
    (tmp_path / "out" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model 'somebody/unknown-model' is not one tcx knows.*model=<option>"):
        open_runs([tmp_path / "out"])
    opened = open_runs([tmp_path / "out"], model="tiny")
    assert opened.spec.name == "tiny" and opened.data_config["name"] == "python-docs"
    spec = build_node(make_cfg().model, "model")  # tiny, as a validated tcx-circuit config holds it
    assert open_runs([tmp_path / "out"], model=spec).spec == spec
    # as the message says, from the command line: `model=` there is the conf/model group (it was refused)
    done = subprocess.run([sys.executable, "-m", "tcx.cli.eval", f"run={tmp_path / 'out'}", "model=tiny",
                           "max_tokens=256", "plots=false", f"out_dir={tmp_path / 'eval'}",
                           f"hydra.run.dir={tmp_path / 'h'}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(next((tmp_path / "eval").glob("eval*.json")).read_text())["eval_tokens"] > 0


def test_tcx_export_cli(make_cfg, tmp_path):
    run = run_dir(make_cfg, tmp_path / "run", "transcoder")
    out = subprocess.run([sys.executable, "-m", "tcx.cli.export", str(run), "--format", "saelens",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and (tmp_path / "out" / "cfg.json").is_file()
    again = subprocess.run([sys.executable, "-m", "tcx.cli.export", str(run), "--format", "saelens",
                            "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_export_never_replaces_what_it_exports_nor_a_run(make_cfg, tmp_path):
    """--force replaced --out whole: --out the run itself (or its parent) deleted the run being exported."""
    run = run_dir(make_cfg, tmp_path / "runs" / "a", "transcoder")
    before = sorted(p.name for p in run.iterdir())
    for out in (run, tmp_path / "runs", run / "export"):
        with pytest.raises(ConfigError, match="which is being exported"):
            export([run], "saelens", out, replace=True)
    assert sorted(p.name for p in run.iterdir()) == before
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"holds a training run or sweep \(checkpoints\)"):
        export([run], "saelens", other, replace=True)
    assert (other / "checkpoints").is_dir()
    export([run], "saelens", tmp_path / "ex")
    export([run], "saelens", tmp_path / "ex", replace=True)  # an earlier export is replaced
    assert (tmp_path / "ex" / "cfg.json").is_file()
