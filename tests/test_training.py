"""The training pipeline end to end on the tiny model: outputs, bank equivalence, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tcx.training.run import train
from tests.conftest import ONCE_IN_CI

REQUIRED_METRICS = {"l0", "fvu", "mse", "dead_fraction", "tokens", "tokens_per_second"}


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "dictionary.safetensors"))


def test_smoke_run_writes_every_output(make_cfg, tmp_path):
    final = train(make_cfg("dictionary.l1_coeff=0.1"), tmp_path)  # the random tiny MLP is dense
    assert set(final) == {"main"}
    for name in ("config.yaml", "checkpoints/last.ckpt", "dictionary.safetensors", "dictionary.json",
                 "metrics.json", "logs/metrics.csv"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED_METRICS
    assert metrics["tokens"] == 65_536
    assert 0 < metrics["l0"] < 64 * 4 and 0 < metrics["fvu"] < 1
    meta = json.loads((tmp_path / "dictionary.json").read_text())
    assert meta["input_hook"] == "blocks.1.ln2.hook_normalized"
    assert meta["target_hook"] == "blocks.1.hook_mlp_out"
    assert meta["model"] == "tiny" and meta["layer"] == 1 and meta["training_tokens"] == 65_536
    assert not list(tmp_path.rglob("*.tmp")), "a temp file was left behind"


def test_the_pytorch_profiler_leaves_a_trace_and_the_outputs(make_cfg, tmp_path):
    """`trainer.profiler=pytorch` hooks every module with torch's record functions, which cannot be
    deep-copied: saving the dictionary in model units used to fail there, after training."""
    final = train(make_cfg("trainer.profiler=pytorch", "trainer.max_tokens=4096", "trainer.eval_tokens=1024"), tmp_path)
    assert set(final) == {"main"} and (tmp_path / "dictionary.safetensors").is_file()
    assert json.loads((tmp_path / "dictionary.json").read_text())["units"] == "model"
    assert list(tmp_path.glob("*training_step*.pt.trace.json"))


@pytest.mark.parametrize("kind", ["transcoder", "sae", "gated"])
def test_the_smoke_experiment_trains_a_working_dictionary(make_cfg, tmp_path, kind):
    # what a user runs first (experiment=smoke, no coefficient given) must not train a dead dictionary
    train(make_cfg(f"dictionary={kind}"), tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    d_sae = json.loads((tmp_path / "dictionary.json").read_text())["d_sae"]
    assert 2 <= m["l0"] <= 0.6 * d_sae and m["fvu"] < 0.7 and m["dead_fraction"] < 0.25, m


def test_bf16_mixed_precision_trains_what_float32_trains(make_cfg, tmp_path):
    """`trainer.precision=bf16-mixed trainer.model_dtype=bfloat16`: the model and the dictionary's
    products in bf16, the weights and optimiser float32. It ends where float32 does, to bf16's
    rounding, and saves float32 weights."""
    runs = {}
    for name, extra in {"fp32": [], "bf16": ["trainer.precision=bf16-mixed", "trainer.model_dtype=bfloat16"]}.items():
        train(make_cfg("dictionary.l1_coeff=0.1", *extra), tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert weights(tmp_path / "bf16")["W_enc"].dtype == torch.float32
    assert runs["bf16"]["l0"] == pytest.approx(runs["fp32"]["l0"], rel=0.1)
    assert runs["bf16"]["fvu"] == pytest.approx(runs["fp32"]["fvu"], rel=0.1)
    assert runs["bf16"]["l0"] != runs["fp32"]["l0"]  # (the products did run in bf16)


def test_dead_fraction_is_the_training_window_and_held_out_has_its_own_name(make_cfg, tmp_path):
    train(make_cfg("trainer.max_tokens=16384", "trainer.dead_window_tokens=8192"), tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    logged = [float(r["dead_fraction"]) for r in rows if r.get("dead_fraction")]
    assert m["dead_fraction"] == pytest.approx(logged[-1])  # what training measured, not overwritten
    assert "train_dead_fraction" not in m and 0 <= m["unfired_fraction"] <= 1
    assert m["eval_tokens"] > 0


def test_bank_members_match_solo_runs(make_cfg, tmp_path):
    values = [0.001, 0.01, 0.1]
    short = ["trainer.max_tokens=16384"]
    bank = "bank=[" + ",".join(f"{{l1_coeff: {v}, name: l1_{i}}}" for i, v in enumerate(values)) + "]"
    train(make_cfg(*short, bank), tmp_path / "bank")
    for i, v in enumerate(values):
        solo = tmp_path / f"solo{i}"
        train(make_cfg(*short, f"dictionary.l1_coeff={v}"), solo)
        banked, alone = weights(tmp_path / "bank" / f"l1_{i}"), weights(solo)
        for k in alone:
            assert torch.equal(banked[k], alone[k]), (v, k)
        assert json.loads((tmp_path / "bank" / f"l1_{i}" / "metrics.json").read_text())["tokens"] == 16384
    # the members really differ: otherwise equality above proves nothing
    first, last = (weights(tmp_path / "bank" / f"l1_{i}")["W_enc"] for i in (0, 2))
    assert not torch.equal(first, last)


@ONCE_IN_CI
def test_a_bank_across_layers_runs_the_model_once_and_matches_solo_runs(make_cfg, tmp_path):
    """Members at different layers share one pass of the model (to the deepest) and each ends with
    its solo run's weights and held-out numbers (its fidelity against ablating its own MLP alone)."""
    short = ["trainer.max_tokens=8192", "trainer.eval_tokens=2048"]
    train(make_cfg(*short, "bank=[{layer: 0, name: l0}, {layer: 1, name: l1}, {layer: 1, dictionary: sae, name: s1}]"),
          tmp_path / "bank")
    read = {}
    for name, solo in (("l0", ["layer=0"]), ("l1", ["layer=1"]), ("s1", ["layer=1", "dictionary=sae"])):
        train(make_cfg(*short, *solo), tmp_path / name)
        banked, alone = weights(tmp_path / "bank" / name), weights(tmp_path / name)
        assert banked.keys() == alone.keys() and all(torch.equal(banked[k], alone[k]) for k in alone), name
        read[name] = [json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "bank" / name, tmp_path / name)]
        for key in ("l0", "fvu", "loss_spliced", "loss_zero_ablated", "loss_mean_ablated", "recovered_mean"):
            assert read[name][0][key] == pytest.approx(read[name][1][key], rel=1e-9, abs=1e-12), (name, key)
        described = [json.loads((d / "dictionary.json").read_text())
                     for d in (tmp_path / "bank" / name, tmp_path / name)]
        assert [d["layer"] for d in described] == [int(solo[0][-1])] * 2
        assert described[0]["input_hook"] == described[1]["input_hook"]
        assert OmegaConf.load(tmp_path / "bank" / name / "config.yaml").layer == int(solo[0][-1])
    # one pass of the model for the three: as many rows as one solo run, not one pass per layer
    assert read["l0"][0]["model_tokens"] == read["l1"][1]["model_tokens"]
    assert read["l0"][0]["loss_zero_ablated"] != read["l1"][0]["loss_zero_ablated"]  # each its own MLP


@pytest.mark.parametrize("kind", ["sae", "jumprelu", "gated"])
def test_a_member_of_another_kind_is_configured_as_its_solo_run(make_cfg, tmp_path, kind):
    """Under experiment=smoke, `{dictionary: <kind>}` in a bank gets what `dictionary=<kind>` gets:
    the experiment's expansion_factor 4 and conf/tuning/smoke-<kind>.yaml, not the bare kind's YAML."""
    from tcx.training.members import plan_members

    (member,), _ = plan_members(make_cfg(f"bank=[{{dictionary: {kind}, name: m}}]"), tmp_path)
    solo = make_cfg(f"dictionary={kind}").dictionary
    assert OmegaConf.to_container(member.config.dictionary) == OmegaConf.to_container(solo)
    assert member.cfg.expansion_factor == 4


def test_a_faster_learning_threshold_keeps_banks_equal_to_solo_runs(make_cfg, tmp_path):
    """JumpReLU's log θ learns at threshold_lr_scale x the lr (its own optimiser group); a bank
    holding it still gives every member its solo weights, and the other kinds one plain group."""
    from tcx.training.module import DictionaryBank
    from tests.test_zoo import kind

    relu, jump = kind(make_cfg, "transcoder"), kind(make_cfg, "jumprelu")
    bank = DictionaryBank({"relu": relu, "jump": jump}, {}, torch.optim.Adam, 1e-3, None)
    plain, fast = bank.param_groups()
    assert fast["lr"] == pytest.approx(1e-3 * jump.cfg.threshold_lr_scale) and jump.cfg.threshold_lr_scale > 1
    assert fast["params"] == [jump.log_threshold] and len(plain["params"]) == len(list(bank.parameters())) - 1
    assert len(DictionaryBank({"relu": relu}, {}, torch.optim.Adam, 1e-3, None).param_groups()) == 1
    short = ["trainer.max_tokens=8192", "trainer.eval_tokens=0"]
    train(make_cfg(*short, "bank=[{name: relu}, {dictionary: jumprelu, name: jump}]"), tmp_path / "bank")
    train(make_cfg(*short, "dictionary=jumprelu"), tmp_path / "solo")
    banked, alone = weights(tmp_path / "bank" / "jump"), weights(tmp_path / "solo")
    for k in alone:
        assert torch.equal(banked[k], alone[k]), k


EVERY_KIND = ("bank=[{name: relu}, {dictionary: sae, name: sae}, {dictionary: topk, k: 8, name: topk},"
              " {dictionary: batchtopk, k: 8, name: batchtopk}, {dictionary: jumprelu, name: jumprelu},"
              " {dictionary: gated, name: gated}, {dictionary: skip_transcoder, k: 8, name: skip}]")
UNIT_DECODERS = ("topk", "batchtopk", "skip")


def _cli(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tcx.cli.train", "experiment=smoke", f"hydra.run.dir={run_dir}",
            f"cache_dir={cache_dir}", "trainer.max_tokens=65536", "trainer.checkpoint_every_n_steps=16",
            "trainer.progress_bar=false", "trainer.eval_tokens=0", EVERY_KIND, *extra]


@ONCE_IN_CI
def test_sigkill_then_resume_gives_identical_weights_for_every_kind(tmp_path, cache_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, cache_dir), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, weights_only=False)
    assert 0 < saved["global_step"] < 64 and not (killed / "relu" / "dictionary.safetensors").exists()
    for name in UNIT_DECODERS:  # the checkpoint holds the renormalised rows the next step starts from
        norms = saved["state_dict"][f"members.{name}.W_dec"].norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6), name

    resumed = subprocess.run(_cli(killed, cache_dir), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    done = subprocess.run(_cli(straight, cache_dir), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for member in ("relu", "sae", "jumprelu", "gated", *UNIT_DECODERS):
        a, b = weights(killed / member), weights(straight / member)
        for k in a:
            assert torch.equal(a[k], b[k]), (member, k)
        assert json.loads((killed / member / "metrics.json").read_text())["tokens"] == 65536


def test_wandb_offline_gives_each_bank_member_its_own_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr("tcx.training.loggers.has_wandb_credentials", lambda: False)
    train(make_cfg("logger=wandb", "trainer.max_tokens=8192", "+tags=[t1]",
                   "bank=[{l1_coeff: 0.1, name: a}, {l1_coeff: 1.0, name: b}]"), tmp_path)
    for name in ("a", "b"):
        runs = list((tmp_path / name / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, name
        assert runs[0].stat().st_size > 1000


def test_a_bank_may_mix_dictionary_kinds(make_cfg, tmp_path):
    final = train(make_cfg("trainer.max_tokens=4096", "trainer.eval_tokens=0",
                           "bank=[{name: relu}, {dictionary: topk, k: 4, name: topk},"
                           " {dictionary: sae, name: sae}]"), tmp_path)
    assert set(final) == {"relu", "topk", "sae"}
    kinds = {n: json.loads((tmp_path / n / "dictionary.json").read_text()) for n in final}
    assert kinds["topk"]["kind"].endswith("TopKConfig") and kinds["topk"]["config"]["k"] == 4
    assert kinds["sae"]["config"]["input_site"] == "mlp_out"
    assert abs(final["topk"]["l0"] - 4) < 1e-6


RESAMPLING = ["dictionary.l1_coeff=3.0", "trainer.dead_window_tokens=2048", "trainer.resample_every_n_tokens=4096"]


@ONCE_IN_CI
@pytest.mark.parametrize("extra", [["dictionary.l1_coeff=0.1"], RESAMPLING], ids=["plain", "resampling"])
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, cache_dir, extra):
    """Global batches are the same as one process's; with resampling, the rows dead features restart
    on are drawn from the global batch, so the replicas stay equal (and equal to one process)."""
    common = ["experiment=smoke", "trainer.max_tokens=16384", "trainer.eval_tokens=0", "trainer.progress_bar=false",
              *extra, f"cache_dir={cache_dir}"]
    for name, more in (("ddp", ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]),
                       ("single", [])):
        out = subprocess.run([sys.executable, "-m", "tcx.cli.train", *common, f"hydra.run.dir={tmp_path / name}",
                              *more], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for k in a:  # all-reduced half-batch gradients round differently from the whole batch's, and Adam
        # turns a near-zero gradient's rounding into a step of up to lr (1e-3): other batches would differ
        # by about lr x steps (1e-2)
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    final = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ddp", "single")}
    if extra is RESAMPLING:
        assert final["single"]["resampled_features"] > 0 and final["ddp"]["resampled_features"] == \
            final["single"]["resampled_features"]
        return
    # each process ran the model on half of the windows (rank 0 reports its share; odd counts round up)
    ran = {n: final[n]["model_tokens"] for n in ("ddp", "single")}
    assert ran["single"] >= 16384 and ran["single"] / 2 <= ran["ddp"] < 1.05 * ran["single"] / 2, ran


def test_the_csv_curves_are_on_disk_while_training_and_kept_across_a_resume(tmp_path):
    """Lightning's CSV logger wrote every 100th step only (never, at a log every 10 steps) until
    the run ended, and a new logger on the same folder deleted the file: a killed run lost its
    curves, a resumed one kept only what came after its checkpoint."""
    from tcx.training.loggers import csv_logger

    path = tmp_path / "logs" / "metrics.csv"
    first = csv_logger(str(tmp_path), "run")
    for step in range(0, 40, 10):
        first.log_metrics({"loss": step / 10}, step=step)
    assert [r["step"] for r in csv.DictReader(path.open())] == ["0", "10", "20", "30"]  # killed here
    resumed = csv_logger(str(tmp_path), "run")  # from a checkpoint at step 20: steps 20 and 30 are redone
    for step in (20, 30, 40):
        resumed.log_metrics({"loss": 100 + step, "l0": 1.0}, step=step)
    resumed.finalize("success")
    rows = [(r["step"], r["loss"], r["l0"]) for r in csv.DictReader(path.open())]
    assert rows == [("0", "0.0", ""), ("10", "1.0", ""), ("20", "120", "1.0"), ("30", "130", "1.0"),
                    ("40", "140", "1.0")]
