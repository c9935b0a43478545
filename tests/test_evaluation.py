"""Evaluation against the math: exact copies recover everything, empty dictionaries equal ablations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tcx.config import build_node
from tcx.data.windows import load_windows
from tcx.dictionaries.io import save_dictionary
from tcx.errors import CheckpointError, ConfigError
from tcx.evaluation.run import evaluate
from tcx.evaluation.splice import target_means

TOKENS = 4096


def place(cfg, directory: Path, setup, d_sae: int | None = None, d_in: int | None = None) -> Path:
    """A run dir holding `cfg` and a dictionary whose weights `setup(dictionary, lm)` sets."""
    spec = build_node(cfg.model, "model")
    lm = spec.load()
    dcfg = build_node(cfg.dictionary, "dictionary", **({"d_sae": d_sae} if d_sae else {}))
    d = dcfg.build(d_in or spec.d_model, spec.d_model)
    with torch.no_grad():
        setup(d, lm, cfg.layer)
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_dictionary(d, directory, {"model": spec.name, "layer": cfg.layer, "training_tokens": 65_536,
                                   "input_hook": spec.hook(dcfg.input_site, cfg.layer),
                                   "target_hook": spec.hook(dcfg.target_site, cfg.layer)})
    return directory


def copy_mlp(d, lm, layer):
    d.W_enc.copy_(lm.bridge.W_in[layer])
    d.b_enc.copy_(lm.bridge.b_in[layer])
    d.W_dec.copy_(lm.bridge.W_out[layer])
    d.b_dec.copy_(lm.bridge.b_out[layer])


def empty(d, lm, layer):
    d.W_dec.zero_()
    d.b_dec.zero_()


def test_relu_mlp_copy_recovers_exactly_everything(make_cfg, tmp_path):
    run = place(make_cfg(), tmp_path / "copy", copy_mlp, d_sae=256)
    r = evaluate([run], max_tokens=TOKENS, plots=False)["dictionaries"][str(run)]
    assert r["fidelity_metric"] == "next_token_ce"
    assert abs(r["loss_spliced"] - r["loss_clean"]) < 1e-5
    assert abs(r["recovered_zero"] - 1.0) < 1e-3 and abs(r["recovered_mean"] - 1.0) < 1e-3
    assert r["kl"] < 1e-6 and r["fvu"] < 1e-8
    assert (run / "eval.json").is_file()


def test_empty_dictionary_is_zero_ablation(make_cfg, tmp_path):
    run = place(make_cfg(), tmp_path / "zero", empty)
    r = evaluate([run], max_tokens=TOKENS)["dictionaries"][str(run)]
    assert r["loss_zero_ablated"] != r["loss_clean"]
    assert abs(r["loss_spliced"] - r["loss_zero_ablated"]) < 1e-6
    assert abs(r["recovered_zero"]) < 1e-4
    assert (run / "feature_density.png").stat().st_size > 1000


def test_mean_output_dictionary_is_mean_ablation(make_cfg, tmp_path, cache_dir):
    cfg = make_cfg()
    spec, corpus = build_node(cfg.model, "model"), build_node(cfg.data, "data")
    lm = spec.load()
    windows = load_windows(corpus, lm, TOKENS * 20, cache_dir)  # enough for TOKENS held out
    heldout = windows.heldout[: -(-TOKENS // windows.tokens_per_window)]
    hook = lm.hook_name("mlp_out", cfg.layer)
    mean = target_means(lm, heldout, [hook], windows.valid, 16)[hook]

    def mean_output(d, lm, layer):
        d.W_dec.zero_()
        d.b_dec.copy_(mean)

    run = place(cfg, tmp_path / "mean", mean_output)
    r = evaluate([run], max_tokens=TOKENS, plots=False)["dictionaries"][str(run)]
    assert abs(r["loss_spliced"] - r["loss_mean_ablated"]) < 1e-6
    assert abs(r["recovered_mean"]) < 1e-4


def test_heldout_windows_are_never_trained_on(make_cfg, cache_dir):
    cfg = make_cfg()
    lm = build_node(cfg.model, "model").load()
    w = load_windows(build_node(cfg.data, "data"), lm, 65_536, cache_dir)
    index = torch.arange(len(w.tokens))
    held = index[index % w.holdout_every == w.holdout_every - 1]
    assert len(w.heldout) == len(held) > 0 and len(w.train) + len(w.heldout) == len(w.tokens)
    assert torch.equal(w.heldout, w.tokens[held])
    # a larger corpus keeps the same split: held-out windows never move into training
    bigger = load_windows(build_node(cfg.data, "data"), lm, 131_072, cache_dir)
    assert torch.equal(bigger.heldout[: len(w.heldout)], w.heldout)


def test_encoder_fidelity_is_one_minus_cosine(make_cfg, tmp_path):
    cfg = make_cfg("model=minilm", "trainer.max_tokens=8192", smoke=False)
    run = place(cfg, tmp_path / "minilm", empty, d_sae=64)
    r = evaluate([run], max_tokens=2048, plots=False)["dictionaries"][str(run)]
    assert r["fidelity_metric"] == "1-cos(sentence_embedding)"
    assert r["loss_clean"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < r["loss_zero_ablated"] < 2.0
    assert r["loss_spliced"] == pytest.approx(r["loss_zero_ablated"], abs=1e-6)


def test_width_mismatch_is_named(make_cfg, tmp_path):
    run = place(make_cfg(), tmp_path / "wide", empty, d_in=32)
    with pytest.raises(ConfigError, match=r"expects width 32 at blocks\.1\.ln2\.hook_normalized"):
        evaluate([run], max_tokens=TOKENS)


def test_run_dir_without_dictionary(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(CheckpointError, match=r"holds no trained dictionary"):
        evaluate([tmp_path])


def test_dictionaries_of_different_models_are_refused(make_cfg, tmp_path):
    a = place(make_cfg(), tmp_path / "a", empty)
    b = place(make_cfg("model.name=other"), tmp_path / "b", empty)
    with pytest.raises(ConfigError, match=r"different models"):
        evaluate([a, b])


def test_tcx_eval_cli_on_a_trained_run(make_cfg, tmp_path):
    import subprocess
    import sys

    from tcx.training.run import train

    train(make_cfg("trainer.max_tokens=8192", "trainer.eval_tokens=0"), tmp_path)
    assert not (tmp_path / "eval.json").exists()
    out = subprocess.run([sys.executable, "-m", "tcx.cli.eval", f"run={tmp_path}", "max_tokens=2048"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "recovered_mean" in out.stdout
    import json

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    wanted = {"recovered_zero", "recovered_mean", "loss_spliced", "kl", "train_l0", "dense_fraction"}
    assert wanted <= set(metrics)
    assert (tmp_path / "feature_density.png").is_file()


def test_copies_at_every_layer_spliced_together_recover_everything(make_cfg, tmp_path):
    runs = [place(make_cfg(f"layer={layer}"), tmp_path / f"L{layer}", copy_mlp, d_sae=256) for layer in (0, 1)]
    results = evaluate(runs, max_tokens=TOKENS, plots=False)
    joint = results["joint"]
    assert abs(joint["loss_spliced"] - joint["loss_clean"]) < 1e-5 and joint["kl"] < 1e-6
    assert abs(joint["recovered_zero"] - 1.0) < 1e-3
    assert (tmp_path / "eval_joint.json").is_file()


def test_dead_and_dense_fractions_on_hand_made_codes():
    from tcx.evaluation.run import Stats

    s = Stats(torch.zeros(4, dtype=torch.long))
    z = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 9 + [[1.0, 2.0, 0.0, 0.0]])  # f0 always, f1 10%, f2 f3 never
    s.add(z, torch.zeros(10, 2), torch.ones(10, 2) + torch.arange(10.0)[:, None])
    r = s.result(dense_threshold=0.05)
    assert r["unfired_fraction"] == 0.5 and r["dense_fraction"] == 0.5 and r["l0"] == 1.1
    assert Stats(torch.zeros(4, dtype=torch.long)).fired.sum() == 0
    assert s.result(dense_threshold=0.5)["dense_fraction"] == 0.25


def test_dictionaries_sharing_a_hook_see_the_same_ablations_as_alone(make_cfg, tmp_path):
    a = place(make_cfg(), tmp_path / "a", empty)
    b = place(make_cfg(), tmp_path / "b", copy_mlp, d_sae=256)
    alone = evaluate([a], max_tokens=TOKENS, plots=False)["dictionaries"][str(a)]
    together = evaluate([a, b], max_tokens=TOKENS, plots=False)["dictionaries"]
    for key in ("loss_mean_ablated", "loss_zero_ablated", "loss_spliced", "recovered_mean"):
        assert together[str(a)][key] == pytest.approx(alone[key], abs=1e-6), key
    assert together[str(b)]["recovered_mean"] == pytest.approx(1.0, abs=1e-3)
