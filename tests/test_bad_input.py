"""Bad input gets a clear error naming the key or file, before anything is written or lost."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.errors import HydraException

from tcx.activations.stream import ActivationStream
from tcx.config import build_node
from tcx.errors import CheckpointError, ConfigError, CorpusError, ModelLoadError, NonFiniteLossError
from tcx.training.run import train


def test_unknown_model_lists_the_known_ones(make_cfg):
    with pytest.raises(HydraException, match=r"(?s)model/gpt3.*minilm.*tiny"):
        make_cfg("model=gpt3")


def test_layer_out_of_range_names_n_layers(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"layer=7 is out of range: model tiny has n_layers=2"):
        train(make_cfg("layer=7"), tmp_path)
    assert not any(tmp_path.iterdir()), "nothing may be written before validation"


@pytest.mark.parametrize("override, key", [
    ("dictionary.l1_coeff=-1", "dictionary.l1_coeff"),
    ("dictionary.expansion_factor=-2", "dictionary.expansion_factor"),
    ("dictionary.d_sae=0", "dictionary.d_sae"),
    ("dictionary.encoder_init_norm=0", "dictionary.encoder_init_norm"),
    ("+dictionary.l1_coef=0.1", "dictionary.l1_coef"),
    ("dictionary=batchtopk dictionary.threshold_momentum=1.5", "dictionary.threshold_momentum"),
    # Hydra's `+` adds a key to a typed node too, where nothing would read it
    ("+trainer.max_tokenz=4096", r"trainer.max_tokenz: no such setting \(did you mean `trainer.max_tokens`"),
    ("+lrr=0.1", "lrr: no such setting"),
])
def test_bad_dictionary_values_name_the_key(make_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(make_cfg(*override.split()), tmp_path)


def test_a_bank_member_field_is_checked_against_its_kind(make_cfg, tmp_path):
    """A misspelt field fails that member alone, naming it and the kind's fields; a correct one
    (normalize) is set."""
    from tcx.training.members import plan_members

    members, failures = plan_members(make_cfg("bank=[{normalize: false, name: raw}, {l1_coef: 1.0, name: typo},"
                                              " {dictionary: topk, normalise: false, name: topk}]"), tmp_path)
    assert [m.name for m in members] == ["raw"] and members[0].cfg.normalize is False
    assert "l1_coef is not a field of ReLUConfig" in failures[tmp_path / "typo"]
    assert "normalise is not a field of TopKConfig" in failures[tmp_path / "topk"]
    assert "l1_coeff" in failures[tmp_path / "typo"] and "normalize" in failures[tmp_path / "topk"]


def test_a_value_only_the_widths_rule_out_fails_its_member_alone(make_cfg, tmp_path):
    """k above the features is found once the model has run (the widths): in a bank it fails that
    member alone, as a value refused earlier does, and the others train."""
    done = train(make_cfg("trainer.max_tokens=4096", "trainer.eval_tokens=0",
                          "bank=[{name: ok}, {dictionary: topk, k: 5000, name: big}]"), tmp_path)
    assert list(done) == ["ok"] and (tmp_path / "ok" / "dictionary.safetensors").is_file()
    error = json.loads((tmp_path / "big" / "error.json").read_text())["error"]
    assert "bank member 'big'" in error and "k=5000" in error
    with pytest.raises(ConfigError, match=r"k=5000"):  # alone, it is the run's error
        train(make_cfg("trainer.max_tokens=4096", "dictionary=topk", "dictionary.k=5000"), tmp_path / "solo")


@pytest.mark.parametrize("name", ["../elsewhere", "/tmp/x", "checkpoints", ".hidden", "old-1", "a b"])
def test_a_bank_member_name_must_be_a_folder_of_the_run(make_cfg, tmp_path, name):
    from tcx.training.members import plan_members
    with pytest.raises(ConfigError, match=r"bank\[1\]\.name"):
        plan_members(make_cfg(f"bank=[{{name: a}}, {{name: '{name}'}}]"), tmp_path)


def test_bad_trainer_type_fails_at_compose_naming_the_key(make_cfg):
    with pytest.raises(HydraException, match=r"trainer\.batch_size"):
        make_cfg("trainer.batch_size=abc")


def test_an_unknown_profiler_is_refused_before_anything_runs(make_cfg, tmp_path):
    """Lightning's own refusal came after the model had loaded, as a traceback."""
    with pytest.raises(ConfigError, match=r"trainer\.profiler must be null, simple, advanced or pytorch, got 'nvtx'"):
        train(make_cfg("trainer.profiler=nvtx"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_prints_one_paragraph_and_exits_1(tmp_path, cache_dir):
    out = subprocess.run([sys.executable, "-m", "tcx.cli.train", "experiment=smoke",
                          "dictionary.l1_coeff=-1", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: dictionary.l1_coeff must be a non-negative number")
    assert "Traceback" not in out.stderr


def test_missing_corpus_file(make_cfg, tmp_path):
    with pytest.raises(CorpusError, match=r"matches no file"):
        train(make_cfg("data=text-files", f"data.paths=[{tmp_path}/nope/*.txt]"), tmp_path / "run")


def test_empty_corpus(make_cfg, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match=r"empty or too small"):
        train(make_cfg("data=text-files", f"data.paths=[{tmp_path}/*.txt]"), tmp_path / "run")


def test_a_corpus_held_out_whole_says_so(make_cfg, tmp_path):
    """One short document whose hash sends it to the held-out side: the error says that, not that
    the corpus is too small."""
    from tcx.data.windows import heldout_pieces

    text = next(t for t in (f"def f{i}(x):\n    return x * {i}\n" * 4 for i in range(1000))
                if heldout_pieces(t, 1, 20)[0])
    (tmp_path / "one.txt").write_text(text)
    with pytest.raises(CorpusError, match=r"leaves 0 tokens to train on.*were held out.*holdout_every=20; raise"):
        train(make_cfg("data=text-files", f"data.paths=[{tmp_path}/*.txt]"), tmp_path / "run")


def test_local_jsonl_and_parquet_corpora_train(make_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "The quick brown fox jumps over the lazy dog. " * 200
    (tmp_path / "a.jsonl").write_text("\n".join(f'{{"text": "{text} {i}"}}' for i in range(10)))
    pq.write_table(pa.table({"text": [text] * 10}), tmp_path / "b.parquet")
    final = train(make_cfg("data=text-files", f"data.paths=[{tmp_path}/*.jsonl,{tmp_path}/*.parquet]",
                           "trainer.max_tokens=8192"), tmp_path / "run")
    assert final["main"]["tokens"] == 8192


@pytest.mark.parametrize("name, content, message", [
    ("a.jsonl", b'{"text": "fine"}\n{"text": "cut', r"a\.jsonl:2 is not a JSON object"),
    ("a.jsonl", b'{"text": "fine"}\n{"text": null}\n', r"a\.jsonl:2: 'text' \(data\.text_field\) is NoneType"),
    ("a.jsonl", b'{"text": "fine"}\n["a list"]\n', r"a\.jsonl:2 has no field 'text'"),
    ("a.jsonl", b'{"text": "caf\xe9"}\n', r"a\.jsonl is not UTF-8 text"),
    ("b.parquet", b"PAR1 not really parquet", r"b\.parquet cannot be read as Parquet"),
])
def test_a_malformed_corpus_file_is_named_with_its_line(make_cfg, tmp_path, name, content, message):
    """These were tracebacks (JSONDecodeError, AttributeError on None, UnicodeDecodeError, ArrowInvalid)."""
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        train(make_cfg("data=text-files", f"data.paths=[{tmp_path}/{name}]"), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.ckpt"))


def test_hub_model_without_network_suggests_the_embedded_default(make_cfg):
    spec = build_node(make_cfg("model=gpt2-small", smoke=False).model, "model")
    with pytest.raises(ModelLoadError, match=r"model=minilm"):
        spec.load()


def test_missing_hookpoint_is_named(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"hookpoint 'blocks\.1\.hook_nope' does not exist"):
        train(make_cfg("model.sites.mlp_in='blocks.{layer}.hook_nope'"), tmp_path)


def test_altered_embedded_weights_are_refused(make_cfg):
    spec = build_node(make_cfg("model=minilm", "model.weights_sha256=00", smoke=False).model, "model")
    with pytest.raises(ModelLoadError, match=r"refusing to use altered weights"):
        spec.load()


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(make_cfg, tmp_path, monkeypatch):
    batch = ActivationStream.batch

    def poisoned(self, step):
        out = batch(self, step)
        return {k: v * float("nan") for k, v in out.items()} if step >= 40 else out

    monkeypatch.setattr(ActivationStream, "batch", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 40: the loss of main is nan"):
        train(make_cfg(), tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 32
    assert not (tmp_path / "dictionary.safetensors").exists()


def test_corrupt_checkpoint_is_named_and_left_untouched(make_cfg, tmp_path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(ckpt)):
        train(make_cfg(), tmp_path)
    assert ckpt.read_bytes() == b"not a checkpoint"


def test_resume_with_another_config_is_refused(make_cfg, tmp_path):
    train(make_cfg("trainer.max_tokens=8192", "dictionary.l1_coeff=2.0"), tmp_path)
    with pytest.raises(ConfigError, match=r"different `dictionary\.l1_coeff` \(2\.0, now 0\.5\): resuming") as e:
        train(make_cfg("trainer.max_tokens=8192", "dictionary.l1_coeff=0.5"), tmp_path)
    assert "_target_" not in str(e.value), "only the keys that differ are named"


def test_resume_across_how_the_optimiser_computes_is_allowed(make_cfg, tmp_path):
    """`optimizer.fused`/`foreach` change how a step is computed, not what is trained: a run dir
    from before `fused: true` was the default resumes under it; any other optimizer key is refused."""
    from omegaconf import OmegaConf

    from tcx.training.resume import check_resume_config
    OmegaConf.save(make_cfg("~optimizer.fused"), tmp_path / "config.yaml")
    check_resume_config(tmp_path, make_cfg())
    check_resume_config(tmp_path, make_cfg("optimizer.fused=false", "+optimizer.foreach=true"))
    with pytest.raises(ConfigError, match=r"`optimizer\.betas`"):
        check_resume_config(tmp_path, make_cfg("optimizer.betas=[0.9,0.99]"))


def test_a_key_left_out_counts_as_its_default_on_resume(make_cfg, tmp_path):
    """A run dir saved before a key was in its kind's YAML (or with a key the YAML leaves to the
    dataclass) resumes where the value is the dataclass's default, and is refused where it is not."""
    from omegaconf import OmegaConf

    from tcx.training.resume import check_resume_config
    saved = OmegaConf.to_container(make_cfg("dictionary=topk"))
    del saved["dictionary"]["aux_straight_through"]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    check_resume_config(tmp_path, make_cfg("dictionary=topk", "dictionary.normalize=true"))
    with pytest.raises(ConfigError, match=r"`dictionary\.aux_straight_through` \(True, now False\)"):
        check_resume_config(tmp_path, make_cfg("dictionary=topk", "dictionary.aux_straight_through=false"))
    with pytest.raises(ConfigError, match=r"`dictionary\.normalize` \(True, now False\)"):
        check_resume_config(tmp_path, make_cfg("dictionary=topk", "dictionary.normalize=false"))


def test_a_config_saved_before_its_group_was_typed_resumes(make_cfg, tmp_path):
    """A run dir's config.yaml from before the model/data/dictionary groups were typed at compose
    time holds `revision: 4632170` where the field is a str and `expansion_factor: 4` where it is a
    float: the same values, so the run resumes; a value that differs is still refused."""
    from omegaconf import OmegaConf

    from tcx.training.resume import check_resume_config
    saved = OmegaConf.to_container(make_cfg("model=gpt2-small", "model.revision=abc"))
    saved["model"]["revision"], saved["dictionary"]["expansion_factor"] = 4632170, 4
    OmegaConf.save(saved, tmp_path / "config.yaml")
    now = make_cfg("model=gpt2-small", "model.revision=4632170")
    assert now.model.revision == "4632170" and now.dictionary.expansion_factor == 4.0
    check_resume_config(tmp_path, now)
    with pytest.raises(ConfigError, match=r"`model\.revision` \('4632170', now '4632171'\)"):
        check_resume_config(tmp_path, make_cfg("model=gpt2-small", "model.revision=4632171"))


def test_resume_refuses_a_trainer_setting_that_changes_what_is_trained(make_cfg, tmp_path):
    """The schedule, precision, AuxK and resampling change the weights: refused, each named. How a
    step runs or what is reported (the model's batch, evaluation, devices, the cache) may change."""
    from omegaconf import OmegaConf

    from tcx.training.resume import check_resume_config
    OmegaConf.save(make_cfg(), tmp_path / "config.yaml")
    for override, named in [("trainer.lr_decay_fraction=0.9", r"`trainer\.lr_decay_fraction` \(0\.2, now 0\.9\)"),
                            ("trainer.lr_warmup_steps=3", "trainer.lr_warmup_steps"),
                            ("trainer.precision=bf16-mixed", "trainer.precision"),
                            ("trainer.model_dtype=bfloat16", "trainer.model_dtype"),
                            ("trainer.resample_every_n_tokens=4096", "trainer.resample_every_n_tokens"),
                            ("trainer.auxk=false", "trainer.auxk"),
                            ("callbacks.resample=null", r"callbacks\.resample\._target_")]:
        with pytest.raises(ConfigError, match=named):
            check_resume_config(tmp_path, make_cfg(override))
    check_resume_config(tmp_path, make_cfg(
        "trainer.model_batch_size=3", "trainer.eval_tokens=0", "trainer.eval_every_n_tokens=4096",
        "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=7", "trainer.progress_bar=false",
        "trainer.activation_cache=true", "trainer.devices=2", "trainer.strategy=ddp", "trainer.compile=default",
        "trainer.profiler=simple", "+callbacks.lr_monitor={_target_: lightning.pytorch.callbacks.LearningRateMonitor}"))
    # a run dir saved before a trainer key existed resumes where the key is at its default
    saved = OmegaConf.to_container(make_cfg())
    del saved["trainer"]["resample_every_n_tokens"], saved["callbacks"]
    OmegaConf.save(saved, tmp_path / "config.yaml")
    check_resume_config(tmp_path, make_cfg())
    with pytest.raises(ConfigError, match=r"`trainer\.resample_every_n_tokens` \(0, now 4096\)"):
        check_resume_config(tmp_path, make_cfg("trainer.resample_every_n_tokens=4096"))


def test_a_checkpoint_is_checked_against_the_config_it_holds(make_cfg, tmp_path):
    """A checkpoint copied without its config.yaml resumed under any settings (and then wrote a
    config.yaml that misstated it); a damaged config.yaml was a YAML traceback in tcx-eval."""
    import shutil

    from tcx.evaluation.run import evaluate

    train(make_cfg("trainer.max_tokens=4096", "trainer.eval_tokens=0"), tmp_path / "run")
    shutil.copytree(tmp_path / "run" / "checkpoints", tmp_path / "copy" / "checkpoints")
    with pytest.raises(ConfigError, match=r"`lr` \(0\.001, now 0\.003\)"):
        train(make_cfg("trainer.max_tokens=4096", "trainer.eval_tokens=0", "lr=3e-3"), tmp_path / "copy")
    assert not (tmp_path / "copy" / "config.yaml").exists()
    ckpt = tmp_path / "copy" / "checkpoints" / "last.ckpt"  # as tcx wrote them before: no config inside
    state = torch.load(ckpt, weights_only=False)
    del state["tcx_config"]
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match=r"holds dictionaries of other shapes than these settings build"):
        train(make_cfg("trainer.max_tokens=8192", "trainer.eval_tokens=0", "dictionary.expansion_factor=8"),
              tmp_path / "copy")
    (tmp_path / "run" / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match=r"config\.yaml holds no readable config"):
        evaluate([tmp_path / "run"], max_tokens=256, plots=False)


def test_a_run_dir_written_before_the_model_modules_split_still_resumes(make_cfg, tmp_path):
    train(make_cfg("trainer.max_tokens=8192"), tmp_path)
    saved = tmp_path / "config.yaml"
    text = saved.read_text()
    assert "tcx.models.native.NativeModelSpec" in text
    saved.write_text(text.replace("tcx.models.native.NativeModelSpec", "tcx.models.spec.NativeModelSpec"))
    assert set(train(make_cfg("trainer.max_tokens=8192"), tmp_path)) == {"main"}  # not refused as another model


def test_a_run_that_failed_before_training_does_not_block_its_retry(make_cfg, tmp_path):
    with pytest.raises(CorpusError):
        train(make_cfg("data=text-files", "data.paths=[/nonexistent/*.txt]"), tmp_path)
    final = train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path)
    assert final["main"]["tokens"] == 2048


def test_rerunning_a_finished_run_shows_its_metrics(make_cfg, tmp_path, capsys):
    first = train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path)
    capsys.readouterr()
    again = train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path)
    assert again["main"]["l0"] == first["main"]["l0"]
    printed = capsys.readouterr().out
    assert "already finished" in printed and f"{first['main']['l0']:.1f}" in printed


def test_a_damaged_metrics_json_is_named_before_any_work(make_cfg, tmp_path):
    """It was a JSONDecodeError traceback: on the rerun of a finished run, and in tcx-eval after the
    whole evaluation had run."""
    from tcx.evaluation.run import evaluate
    from tcx.sweeps.collect import collect

    train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text('{"l0": 3')
    with pytest.raises(CheckpointError, match=r"metrics\.json is not a JSON object.*Move it aside"):
        train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"metrics\.json is not a JSON object"):
        evaluate([tmp_path / "run"], max_tokens=256, plots=False)
    assert not (tmp_path / "run" / "eval.json").exists()
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "run").rename(tmp_path / "sweep" / "0" / "run")
    point = collect(tmp_path / "sweep", "s", 1)["points"][0]
    assert point["status"] == "failed" and "is not a JSON object" in point["error"]


@pytest.mark.parametrize("config, override, message", [
    ("features", "+top_kk=3", "top_kk: no such setting"),
    ("eval", "+max_tokenz=3", r"max_tokenz: no such setting \(did you mean `max_tokens`"),
    # max_tokens=0 replaced a run's held-out numbers in metrics.json with 63 tokens' worth
    ("eval", "max_tokens=0", "max_tokens=0 must be at least 1"),
    ("eval", "batch_windows=0", "batch_windows=0 must be at least 1"),
    ("features", "dense_threshold=-0.5", r"dense_threshold=-0.5 must lie in \(0, 1\]"),
    ("circuit", "+prune.node_thresold=0.5",
     r"prune\.node_thresold: no such setting \(did you mean `prune\.node_threshold`"),
])
def test_every_tool_refuses_bad_settings_before_work(config, override, message):
    """tcx-eval, tcx-features and tcx-circuit read their settings through `validated`."""
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR, validated
    from tcx.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        needed = ["prompt=x", "transcoders=[a]"] if config == "circuit" else []
        cfg = compose(config, overrides=[override, *needed])
    with pytest.raises(ConfigError, match=message):
        validated(cfg)


def test_tcx_eval_finds_a_folder_it_cannot_write_before_the_work(make_cfg, tmp_path, monkeypatch):
    import os

    from tcx.errors import NotWritableError
    from tcx.evaluation.run import evaluate

    train(make_cfg("trainer.max_tokens=2048", "trainer.eval_tokens=0"), tmp_path / "run")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere: simulated
    with pytest.raises(NotWritableError, match=r"cannot write .*run: no write permission.*nothing was evaluated"):
        evaluate([tmp_path / "run"], max_tokens=256, plots=False)


def test_tcx_eval_out_dir_leaves_the_runs_and_skips_a_meaningless_joint(make_cfg, tmp_path, caplog):
    """`out_dir=` was ignored for tcx runs: a quick check replaced the run's held-out numbers. Two
    dictionaries on one hook got 'joint' numbers that were the last one's alone."""
    import json

    from tcx.evaluation.run import evaluate

    train(make_cfg("trainer.max_tokens=2048", "bank=[{name: a}, {name: b, l1_coeff: 1.0}]"), tmp_path / "bank")
    before = {m: (tmp_path / "bank" / m / "metrics.json").read_text() for m in ("a", "b")}
    done = evaluate([tmp_path / "bank"], max_tokens=256, plots=False, out_dir=tmp_path / "quick")
    assert {m: (tmp_path / "bank" / m / "metrics.json").read_text() for m in ("a", "b")} == before
    assert sorted(p.name for p in (tmp_path / "quick").iterdir()) == ["eval_a.json", "eval_b.json"]
    assert json.loads((tmp_path / "quick" / "eval_a.json").read_text())["eval_tokens"] < 1024
    assert done["joint"] is None and "no joint numbers" in caplog.text
