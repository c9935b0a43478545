"""Evaluation against the math: exact copies recover everything, empty dictionaries equal ablations."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tcx.config import build_node
from tcx.data.windows import load_windows
from tcx.dictionaries.io import save_dictionary
from tcx.errors import CheckpointError, ConfigError, CorpusError
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
    windows = load_windows(corpus, lm, 0, cache_dir, TOKENS)
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


def _doc_ids(windows, valid) -> list[int]:
    """The `<doc N>` markers in windows of the tiny model (bytes as tokens), in stream order."""
    ids = windows[:, valid].flatten()
    text = bytes(ids[ids < 256].tolist()).decode("utf-8", "replace")
    return [int(m) for m in re.findall(r"<doc (\d+)>", text)]


@pytest.fixture
def numbered_docs(tmp_path):
    """600 documents that say which they are, then the first 50 again (copies of a text)."""
    docs = [f"<doc {i}> " + "lorem ipsum dolor " * (3 + i % 7) for i in range(600)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs + docs[:50]))
    return path


def test_heldout_documents_are_never_trained_on(make_cfg, numbered_docs, tmp_path):
    cfg = make_cfg("data=text-files", f"data.paths=[{numbered_docs}]")
    lm, corpus = build_node(cfg.model, "model").load(), build_node(cfg.data, "data")
    w = load_windows(corpus, lm, 16_384, tmp_path / "cache", 2048)
    train, held = _doc_ids(w.train, w.valid), _doc_ids(w.heldout, w.valid)
    assert w.tokens_per_window * len(w.train) >= 16_384 and w.tokens_per_window * len(w.heldout) >= 2048
    assert not set(train) & set(held)  # no document on both sides, its copies included
    assert train == sorted(train) and held == sorted(held)  # each side keeps the corpus's order
    # every document up to where both sides reach is on one side: the split is of documents, 1 in 20
    reach = min(max(train), max(held))
    assert sorted(i for i in set(train) | set(held) if i < reach) == list(range(reach))
    assert 0.02 < len([i for i in set(held) if i < reach]) / reach < 0.1
    # asking for more never moves a window from one side to the other
    bigger = load_windows(corpus, lm, 65_536, tmp_path / "cache", 8192)
    assert torch.equal(bigger.train[: len(w.train)], w.train)
    assert torch.equal(bigger.heldout[: len(w.heldout)], w.heldout)


def test_window_holdout_is_every_20th_window_of_one_stream(make_cfg, numbered_docs, tmp_path):
    """`data.holdout=windows`, the split before documents: the README's older numbers reproduce."""
    cfg = make_cfg("data=text-files", f"data.paths=[{numbered_docs}]", "data.holdout=windows")
    lm, corpus = build_node(cfg.model, "model").load(), build_node(cfg.data, "data")
    w = load_windows(corpus, lm, 16_384, tmp_path / "cache")
    train, held = list(w.train), list(w.heldout)
    stream = [held.pop(0) if i % 20 == 19 else train.pop(0) for i in range(len(w.train) + len(w.heldout))]
    ids = _doc_ids(torch.stack(stream), w.valid)
    assert sorted(set(ids)) == list(range(max(ids) + 1)) and ids == sorted(ids)  # one unbroken stream
    assert len(w.heldout) == (len(w.train) + len(w.heldout)) // 20 > 0
    # more held-out text comes from further on and leaves the training windows as they were
    more = load_windows(corpus, lm, 16_384, tmp_path / "cache", 3000)
    assert torch.equal(more.train, w.train) and torch.equal(more.heldout[: len(w.heldout)], w.heldout)
    assert more.tokens_per_window * len(more.heldout) >= 3000


def test_a_few_long_documents_are_held_out_piece_by_piece(make_cfg, tmp_path):
    """Three documents of about 40 windows each: pieces of 8 windows are held out, so such a corpus
    still has held-out text, and no sentence is on both sides."""
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(f"<doc {d * 1000 + s}> lorem ipsum." for s in range(140))})
                            + "\n" for d in range(3)))
    cfg = make_cfg("data=text-files", f"data.paths=[{path}]")
    lm, corpus = build_node(cfg.model, "model").load(), build_node(cfg.data, "data")
    w = load_windows(corpus, lm, 2048, tmp_path / "cache", 256)
    train, held = set(_doc_ids(w.train, w.valid)), set(_doc_ids(w.heldout, w.valid))
    assert train and held and not train & held


def test_a_corpus_with_nothing_held_out_is_named(make_cfg, tmp_path):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"text": f"text number {i} " * 10}) + "\n" for i in range(3)))
    cfg = make_cfg("data=text-files", f"data.paths=[{path}]")
    lm, corpus = build_node(cfg.model, "model").load(), build_node(cfg.data, "data")
    with pytest.raises(CorpusError, match="held out no text.*data.holdout_every=20"):
        load_windows(corpus, lm, 1024, tmp_path / "cache", 1024)


def test_encoder_fidelity_is_one_minus_cosine(make_cfg, tmp_path):
    cfg = make_cfg("model=minilm", "trainer.max_tokens=8192", smoke=False)
    run = place(cfg, tmp_path / "minilm", empty, d_sae=64)
    r = evaluate([run], max_tokens=2048, plots=False)["dictionaries"][str(run)]
    assert r["fidelity_metric"] == "1-cos(sentence_embedding)"
    assert r["loss_clean"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < r["loss_zero_ablated"] < 2.0
    assert r["loss_spliced"] == pytest.approx(r["loss_zero_ablated"], abs=1e-6)


def test_sentence_embedding_and_an_ablation_match_hugging_faces_bert(make_cfg):
    """The encoder's fidelity reads MiniLM's sentence embedding from a forward that stops at the
    last block (the masked-LM head after it never runs): the same embedding as transformers'
    BertModel mean-pooled and normalised, clean and with layer 3's MLP output zeroed."""
    from transformers import BertModel

    from tcx.evaluation.fidelity import encoder_outputs
    from tcx.evaluation.splice import ablation_hooks
    from tcx.models.embedded import model_dir

    cfg = make_cfg("model=minilm", smoke=False)
    spec = build_node(cfg.model, "model")
    lm = spec.load()
    hf = BertModel.from_pretrained(model_dir(spec.package), add_pooling_layer=False).eval()
    tokens = load_windows(build_node(cfg.data, "data"), lm, 8192, cfg.cache_dir, 1024).heldout[:4]

    def embedding(edit=None):
        hook = edit and hf.encoder.layer[3].output.dense.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        with torch.no_grad():
            h = hf(input_ids=tokens).last_hidden_state
        if hook:
            hook.remove()
        return torch.nn.functional.normalize(h.mean(1), dim=-1)

    with torch.inference_mode():
        clean = encoder_outputs(lm, tokens, [])
        zeroed = encoder_outputs(lm, tokens, ablation_hooks({"blocks.3.hook_mlp_out": None}, slice(None)))
    torch.testing.assert_close(clean, embedding(), atol=1e-5, rtol=0)
    torch.testing.assert_close(zeroed, embedding(edit=True), atol=1e-5, rtol=0)
    assert (clean * zeroed).sum(-1).max() < 0.999  # the ablation changed the embedding


def noisy_copy(d, lm, layer):
    """A ReLU MLP's copy with noise in the decoder: spliced, neither clean nor ablated."""
    copy_mlp(d, lm, layer)
    d.W_dec.add_(0.05 * d.W_dec.std() * torch.randn(d.W_dec.shape, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("model", ["tiny causal", "minilm"])
def test_kept_baselines_give_the_same_numbers_without_their_runs(make_cfg, tmp_path, monkeypatch, model):
    """The clean and ablated runs do not depend on the dictionary: a second evaluation reads them from
    <cache_dir>/baselines/ and runs the model only spliced (and clean, for a causal LM's KL); its
    numbers are the first's to the last bit. A file that cannot be read is recomputed."""
    from tcx.evaluation import run as eval_run

    cfg = (make_cfg(f"cache_dir={tmp_path / 'cache'}") if model == "tiny causal" else
           make_cfg("model=minilm", "trainer.max_tokens=8192", f"cache_dir={tmp_path / 'cache'}", smoke=False))
    runs = [place(cfg, tmp_path / "a", noisy_copy, d_sae=1536 if model == "minilm" else 256)]
    runs.append(place(cfg, tmp_path / "b", empty))
    forwards = []

    def counted(lm, tokens, hooks):
        forwards.append(len(tokens))
        return outputs(lm, tokens, hooks)

    outputs = eval_run.outputs
    monkeypatch.setattr(eval_run, "outputs", counted)

    def rows(runs):
        forwards.clear()
        return [evaluate([r], max_tokens=1024, plots=False)["dictionaries"][str(r)] for r in runs]

    first = rows(runs[:1])
    windows, batches = sum(forwards) // 4, len(forwards) // 4  # clean, zero, mean, spliced
    assert len(list((tmp_path / "cache" / "baselines").glob("*.pt"))) == 1
    again, other = rows(runs)
    assert again == first[0]
    per_batch = 2 if model == "tiny causal" else 1
    assert len(forwards) == 2 * per_batch * batches and sum(forwards) == 2 * per_batch * windows
    assert first[0]["loss_spliced"] not in (first[0]["loss_clean"], first[0]["loss_zero_ablated"])
    assert 0 < first[0]["fvu"] < 1
    assert other["loss_spliced"] == pytest.approx(other["loss_zero_ablated"], abs=1e-6)  # read, still right
    (baseline,) = (tmp_path / "cache" / "baselines").glob("*.pt")
    baseline.write_bytes(b"not a torch file")
    assert rows(runs[:1]) == first and len(forwards) == 4 * batches


def test_baselines_that_cannot_be_kept_are_a_warning_not_an_error(tmp_path, caplog):
    """A cache_dir that cannot be written (here a file's path) must not fail the evaluation's run."""
    from tcx.evaluation.baselines import BaselineKey, Baselines, save

    key = BaselineKey("m", "s", "w", "h", (0, 1), 16, ("hook",), "cpu", "t")
    (tmp_path / "not-a-dir").write_text("")
    save(tmp_path / "not-a-dir", key, Baselines({"hook": torch.zeros(2)}))
    assert "not kept" in caplog.text


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
