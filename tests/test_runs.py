"""Opening dictionaries in the model's units: folding, the one opener, the paper's pickles."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from tcx.config import build_node
from tcx.dictionaries.io import load_dictionary, save_dictionary
from tcx.errors import CheckpointError, ConfigError
from tcx.evaluation.run import evaluate
from tcx.runs import open_runs
from tcx.runs.export import export
from tests.test_configs import options
from tests.test_zoo import kind

GEN = torch.Generator().manual_seed(0)


def trained_like(make_cfg, name: str, d_in: int = 16, d_out: int = 12):
    """A dictionary of kind `name` with perturbed weights and normalisation scales far from 1."""
    d = kind(make_cfg, name, d_in=d_in, d_out=d_out, seed=1)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=GEN))
        d.input_scale.fill_(3.7)
        d.target_scale.fill_(0.21)
    return d.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", options("dictionary"))
def test_folding_the_scales_changes_no_output(make_cfg, name):
    d = trained_like(make_cfg, name)
    x = 2 * torch.randn(256, 16, generator=GEN)
    z, y = d.encode_decode(x)
    import copy

    folded = copy.deepcopy(d).rescale_()
    assert folded.in_model_units
    z1, y1 = folded.encode_decode(x)
    assert rel(y1, y) < 1e-6 and rel(z1, z) < 1e-6
    assert (z != 0).float().mean() > 0.01  # features do fire: the comparison means something
    unfolded = copy.deepcopy(folded).rescale_(3.7, 0.21)
    assert rel(unfolded.encode_decode(x)[1], y) < 1e-6
    torch.testing.assert_close(unfolded.W_enc, d.W_enc)


def test_saved_tensors_are_in_model_units_at_face_value(make_cfg, tmp_path):
    """What SAELens-style readers do with dictionary.safetensors: the plain formula, no scales."""
    d = trained_like(make_cfg, "transcoder")
    save_dictionary(d, tmp_path, {"model": "tiny"})
    t = load_file(str(tmp_path / "dictionary.safetensors"))
    x = torch.randn(64, 16, generator=GEN)
    face_value = torch.relu(x @ t["W_enc"] + t["b_enc"]) @ t["W_dec"] + t["b_dec"]
    assert rel(face_value, d.reconstruct(x)) < 1e-6
    meta = json.loads((tmp_path / "dictionary.json").read_text())
    assert meta["units"] == "model"
    assert meta["normalisation"] == {"input_scale": pytest.approx(3.7), "target_scale": pytest.approx(0.21)}
    trained_units, _ = load_dictionary(tmp_path, units="normalised")
    torch.testing.assert_close(trained_units.W_enc, d.W_enc)
    assert float(trained_units.input_scale) == pytest.approx(3.7)
    model_units, _ = load_dictionary(tmp_path)
    torch.testing.assert_close(model_units.W_enc, t["W_enc"])


def test_skip_transcoder_folds_its_skip(make_cfg, tmp_path):
    d = trained_like(make_cfg, "skip_transcoder")
    save_dictionary(d, tmp_path, {"model": "tiny"})
    t = load_file(str(tmp_path / "dictionary.safetensors"))
    x = torch.randn(64, 16, generator=GEN)
    pre = x @ t["W_enc"] + t["b_enc"]
    values, index = pre.relu().topk(d.cfg.k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, index, values)
    assert rel(z @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"], d.reconstruct(x)) < 1e-6


# -- the paper's GPT-2 transcoders ------------------------------------------------------------------
def paper_pickle(path, state: dict, **cfg) -> None:
    """A file laid out like the paper's: a `sae_training.config` dataclass that is importable only
    while the file is written, as on the authors' machines."""
    package, config = types.ModuleType("sae_training"), types.ModuleType("sae_training.config")

    @dataclasses.dataclass
    class LanguageModelSAERunnerConfig:
        model_name: str = "gpt2-small"
        hook_point: str = "blocks.8.ln2.hook_normalized"
        out_hook_point: str = "blocks.8.hook_mlp_out"
        d_in: int = 768
        dtype: torch.dtype = torch.float32
        is_transcoder: bool = True

    LanguageModelSAERunnerConfig.__module__ = "sae_training.config"
    LanguageModelSAERunnerConfig.__qualname__ = "LanguageModelSAERunnerConfig"
    config.LanguageModelSAERunnerConfig = LanguageModelSAERunnerConfig
    sys.modules.update({"sae_training": package, "sae_training.config": config})
    try:
        torch.save({"cfg": LanguageModelSAERunnerConfig(**cfg), "state_dict": state}, path)
    finally:
        del sys.modules["sae_training"], sys.modules["sae_training.config"]


def copy_of_tiny_mlp(make_cfg, layer: int = 1) -> dict:
    """The tiny model's ReLU MLP at `layer` in the paper's layout, with a non-zero input bias b_dec."""
    lm = build_node(make_cfg().model, "model").load()
    W_in, b_in = lm.bridge.W_in[layer].detach(), lm.bridge.b_in[layer].detach()
    b_dec = 0.5 * torch.randn(W_in.shape[0], generator=GEN)
    # relu((x - b_dec) W_in + b_enc) = relu(x W_in + b_in)  when  b_enc = b_in + b_dec W_in
    return {"W_enc": W_in.clone(), "b_enc": b_in + b_dec @ W_in, "W_dec": lm.bridge.W_out[layer].detach().clone(),
            "b_dec": b_dec, "b_dec_out": lm.bridge.b_out[layer].detach().clone()}


def test_paper_pickle_imports_without_its_package_and_matches_its_forward(tmp_path):
    d_in, d_sae = 8, 20
    state = {"W_enc": torch.randn(d_in, d_sae, generator=GEN), "b_enc": torch.randn(d_sae, generator=GEN),
             "W_dec": torch.randn(d_sae, d_in, generator=GEN), "b_dec": torch.randn(d_in, generator=GEN),
             "b_dec_out": torch.randn(d_in, generator=GEN)}
    path = tmp_path / "final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt"
    paper_pickle(path, state, d_in=d_in)
    assert "sae_training" not in sys.modules
    (opened,) = open_runs([path]).dictionaries
    x = torch.randn(50, d_in, generator=GEN)
    paper = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"]) @ state["W_dec"] + state["b_dec_out"]
    assert rel(opened.dictionary.reconstruct(x), paper) < 1e-6
    assert (opened.input_hook, opened.target_hook) == ("blocks.8.ln2.hook_normalized", "blocks.8.hook_mlp_out")
    assert opened.layer == 8 and opened.meta["model"] == "gpt2-small"


def test_paper_transcoder_copying_the_mlp_recovers_all_the_loss(make_cfg, tmp_path):
    """Imported like a user's download, evaluated like a trained run: an exact copy is exact."""
    make_cfg()  # the token cache
    path = tmp_path / "final_sparse_autoencoder_tiny_blocks.1.ln2.hook_normalized_256.pt"
    paper_pickle(path, copy_of_tiny_mlp(make_cfg), model_name="tiny", hook_point="blocks.1.ln2.hook_normalized",
                 out_hook_point="blocks.1.hook_mlp_out", d_in=64)
    results = evaluate([path], max_tokens=2048, plots=False, out_dir=tmp_path / "eval")
    r = results["dictionaries"][path.stem + "-L1"]
    assert abs(r["recovered_zero"] - 1.0) < 1e-4 and r["kl"] < 1e-6
    assert (tmp_path / "eval" / f"eval_{path.stem}-L1.json").is_file()


def test_a_pickle_that_is_not_a_transcoder_says_what_it_found(tmp_path):
    path = tmp_path / "final_sparse_autoencoder_x.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"not one of the paper's transcoders.*found a dict with keys \['weights"):
        open_runs([path])
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=str(path)):
        open_runs([path])


# -- one way in ---------------------------------------------------------------------------------------
def test_open_runs_finds_every_member_of_a_sweep_and_places_them_at_their_recorded_hooks(make_cfg, tmp_path):
    from tcx.training.run import train

    train(make_cfg("bank=[{l1_coeff: 0.1, name: a}, {input_site: mlp_out, name: b}]", "trainer.max_tokens=2048",
                   "trainer.eval_tokens=0"), tmp_path / "sweep" / "0")
    # an earlier run that `resume=false` moved aside is kept, never opened as one of the sweep's
    shutil.copytree(tmp_path / "sweep" / "0" / "a", tmp_path / "sweep" / "0" / "old-20261128-101010" / "a")
    opened = open_runs([tmp_path / "sweep"])
    assert [d.source.name for d in opened.dictionaries] == ["a", "b"]
    a, b = opened.dictionaries
    assert (a.input_hook, a.target_hook) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert b.input_hook == b.target_hook == "blocks.1.hook_mlp_out"
    assert opened.spec.name == "tiny" and opened.corpus.name == "python-stdlib"
    opened.check_widths()
    held, valid = opened.heldout(1024)
    assert held.shape[0] * (valid.stop - valid.start) >= 1024


def test_a_folder_in_no_known_format_lists_the_formats(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"no dictionary in a format tcx reads.*saelens.*sparsify.*circuit-tracer"):
        open_runs([tmp_path / "stuff"])


def test_import_to_tcx_then_evaluate_and_compare(make_cfg, tmp_path):
    make_cfg()
    path = tmp_path / "final_sparse_autoencoder_tiny_blocks.1.ln2.hook_normalized_256.pt"
    paper_pickle(path, copy_of_tiny_mlp(make_cfg), model_name="tiny", hook_point="blocks.1.ln2.hook_normalized",
                 out_hook_point="blocks.1.hook_mlp_out", d_in=64)
    run = tmp_path / "imported"
    written = export([path], "tcx", run)
    assert run / "dictionary.safetensors" in written and run / "config.yaml" in written
    r = evaluate([run], max_tokens=2048, plots=False)["dictionaries"][str(run)]
    assert abs(r["recovered_zero"] - 1.0) < 1e-4
    from tcx.compare.gather import gather

    (row,) = gather([str(run)]).rows
    assert row["model"] == "tiny" and row["layer"] == 1 and row["l0"] == pytest.approx(r["l0"])
    with pytest.raises(ConfigError, match="already exists"):
        export([path], "tcx", run)


def test_files_saved_before_model_units_still_open_in_model_units(make_cfg, tmp_path):
    """A dictionary.json without `units` holds normalised tensors with the scales as buffers."""
    from safetensors.torch import save_file

    from tcx.dictionaries.io import describe

    d = trained_like(make_cfg, "topk")
    save_file({k: v.contiguous() for k, v in d.state_dict().items()}, str(tmp_path / "dictionary.safetensors"))
    (tmp_path / "dictionary.json").write_text(json.dumps({**describe(d), "model": "tiny"}))
    loaded, _ = load_dictionary(tmp_path)
    assert loaded.in_model_units
    x = torch.randn(64, 16, generator=GEN)
    assert rel(loaded.eval().reconstruct(x), d.reconstruct(x)) < 1e-6
