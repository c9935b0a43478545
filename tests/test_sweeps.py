"""Sweeps: files, packing, failure isolation, and a real SLURM (skipped without one, never in CI)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tcx.errors import ConfigError
from tcx.sweeps.plan import jobs, multirun_overrides
from tcx.sweeps.spec import SweepSpec
from tcx.sweeps.validate import check_grid_keys
from tests.conftest import ONCE_IN_CI

REPO = Path(__file__).resolve().parents[1]


def sweep_file(tmp_path: Path, grid: dict, overrides: list[str], name: str = "t") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "overrides": overrides, "grid": grid}))
    return path


def tcx_sweep(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcx.cli.sweep", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def small(cache_dir) -> list[str]:
    return ["experiment=smoke", "trainer.max_tokens=8192", "trainer.eval_tokens=1024",
            "trainer.progress_bar=false", f"cache_dir={cache_dir}"]


def test_shipped_sweeps_load_and_pack():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        spec = SweepSpec.load(path)
        assert spec.points()
    frontier = SweepSpec.load(REPO / "sweeps" / "l1-frontier.yaml")
    assert len(frontier.points()) == 10 and jobs(frontier) == 1
    (bank,) = multirun_overrides(frontier)
    assert bank.startswith("bank=[") and bank.count("{") == 10
    layers = SweepSpec.load(REPO / "sweeps" / "all-layers.yaml")
    assert jobs(layers) == 1 and jobs(dataclasses.replace(layers, pack=False)) == 6  # one model pass for 6 layers
    (bank,) = multirun_overrides(layers)
    assert [f"{{layer: {i}, " in bank for i in range(6)] == [True] * 6
    assert jobs(SweepSpec.load(REPO / "sweeps" / "gpt2-all-layers.yaml")) == 12  # a cluster runs them side by side
    smoke = SweepSpec.load(REPO / "sweeps" / "smoke.yaml")
    assert len(smoke.points()) == 4 and jobs(smoke) == 1


def test_bad_sweep_files(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        SweepSpec.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"grid"):
        SweepSpec.load(sweep_file(tmp_path, {}, []))
    with pytest.raises(ConfigError, match=r"'dictionary\.l1_coef' is not a field"):
        check_grid_keys(SweepSpec.load(sweep_file(tmp_path, {"dictionary.l1_coef": [1]}, [])), ["experiment=smoke"])
    with pytest.raises(ConfigError, match=r"trainer\.max_tokenz"):
        check_grid_keys(SweepSpec.load(sweep_file(tmp_path, {"trainer.max_tokenz": [1]}, [])), ["experiment=smoke"])
    (tmp_path / "scalar.yaml").write_text("grid: {dictionary.l1_coeff: [1]}\noverrides: trainer.max_tokens=1000\n")
    with pytest.raises(ConfigError, match=r"`overrides` must be a list"):
        SweepSpec.load(tmp_path / "scalar.yaml")
    (tmp_path / "pack.yaml").write_text("grid: {dictionary.l1_coeff: [1]}\npack: 'false'\n")
    with pytest.raises(ConfigError, match=r"`pack` must be true or false"):
        SweepSpec.load(tmp_path / "pack.yaml")


def test_a_misspelt_pack_on_the_command_line_submits_nothing(tmp_path):
    out = tcx_sweep(str(REPO / "sweeps" / "smoke.yaml"), "sweep.pack=flase", f"hydra.sweep.dir={tmp_path / 's'}")
    assert out.returncode == 1 and "sweep.pack is true or false" in out.stderr  # it meant false
    assert not (tmp_path / "s").exists()


def test_unanswering_cluster_submits_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sinfo on PATH
    out = subprocess.run([sys.executable, "-m", "tcx.cli.sweep", str(REPO / "sweeps" / "smoke.yaml"),
                          "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 's'}"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and "SLURM cluster does not answer" in out.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_packed_local_sweep_isolates_a_failing_point(tmp_path, cache_dir, launcher):
    path = sweep_file(tmp_path, {"dictionary.l1_coeff": [0.1, -1.0, 0.3]}, small(cache_dir))
    out = tcx_sweep(str(path), f"hydra.sweep.dir={tmp_path / 's'}", f"hydra/launcher={launcher}")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["done"] == 2 and summary["failed"] == 1
    (bad,) = [p for p in summary["points"] if p["status"] == "failed"]
    assert "l1_coeff must be a non-negative number" in bad["error"]
    assert {p["dir"].rsplit("/", 1)[1] for p in summary["points"]} == {
        "l1_coeff=0.1", "l1_coeff=-1.0", "l1_coeff=0.3"}


def test_nan_member_is_retired_and_the_rest_of_the_bank_finishes(make_cfg, tmp_path, monkeypatch):
    from tcx.dictionaries.relu import ReLUDictionary
    from tcx.training.run import train

    loss = ReLUDictionary.loss

    def poisoned(self, x, target, sparsity_scale=1.0):
        out = loss(self, x, target, sparsity_scale)
        return out._replace(loss=out.loss * float("nan")) if self.cfg.l1_coeff == 0.5 else out

    monkeypatch.setattr(ReLUDictionary, "loss", poisoned)
    final = train(make_cfg("trainer.max_tokens=8192", "bank=[{l1_coeff: 0.1, name: ok}, {l1_coeff: 0.5, name: nan}]"),
                  tmp_path)
    assert set(final) == {"ok"}
    assert "loss of nan is nan" in json.loads((tmp_path / "nan" / "error.json").read_text())["error"]
    assert not (tmp_path / "nan" / "dictionary.safetensors").exists()


def submitted_tasks(sweep_dir: Path) -> set[str]:
    """SLURM ids of the sweep's tasks: `<array>_<i>` (submitit also keeps a folder for the array)."""
    names = {p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir()}
    tasks = {n for n in names if "_" in n}
    return tasks or names


def sacct_states(job: str) -> list[str]:
    for _ in range(50):  # accounting lags the end of a job by a moment
        out = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True)
        states = out.stdout.split()
        if states and all(s not in ("RUNNING", "PENDING", "COMPLETING") for s in states):
            return states
        time.sleep(0.2)
    return states


def test_failing_point_among_good_ones_on_slurm(slurm, tmp_path, cache_dir):
    path = sweep_file(tmp_path, {"dictionary.l1_coeff": [0.1, -1.0]}, small(cache_dir))
    out = tcx_sweep(str(path), "hydra/launcher=slurm", "sweep.pack=false", f"hydra.sweep.dir={tmp_path / 's'}",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2")
    assert out.returncode == 1
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["done"] == 1 and summary["failed"] == 1
    (bad,) = [p for p in summary["points"] if p["status"] == "failed"]
    assert "l1_coeff must be a non-negative number" in bad["error"] and bad["log"]
    assert "FAILED" in out.stdout
    (good,) = [p for p in summary["points"] if p["status"] == "done"]
    config = yaml.safe_load((Path(good["dir"]) / "config.yaml").read_text())
    assert config["group"] == "t" and "dictionary.l1_coeff=0.1" in config["tags"]  # W&B group and tags


@pytest.mark.parametrize("pack", ["true", pytest.param("false", marks=ONCE_IN_CI)])
def test_smoke_sweep_on_slurm(slurm, tmp_path, cache_dir, pack):
    sweep_dir = tmp_path / "s"
    out = tcx_sweep(str(REPO / "sweeps" / "smoke.yaml"), "hydra/launcher=slurm", f"sweep.pack={pack}",
                    f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}", "trainer.progress_bar=false",
                    "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["done"] == 4 and summary["failed"] == 0
    for point in summary["points"]:
        assert {"l0", "fvu", "recovered_mean"} <= set(point["metrics"])
    job_ids = submitted_tasks(sweep_dir)
    assert len(job_ids) == (1 if pack == "true" else 4)
    for job in job_ids:
        assert sacct_states(job) == ["COMPLETED"], job


def test_the_slurm_watcher_believes_sacct_only_once_squeue_has_let_the_job_go(tmp_path, monkeypatch):
    """sacct can report a requeued job's first attempt FAILED while squeue holds it PENDING again."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    from tcx.sweeps.slurm_wait import RequeueAwareWatcher

    (tmp_path / "sacct").write_text("#!/bin/sh\nprintf 'JobID|State|NodeList\\n7_0|FAILED|vm\\n'\n")
    (tmp_path / "squeue").write_text(f"#!/bin/sh\n[ -f {tmp_path}/queued ] && echo PENDING && exit 0\n"
                                     "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n")
    for tool in ("sacct", "squeue"):
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (tmp_path / "queued").touch()
    assert SlurmInfoWatcher().is_done("7_0", mode="force")  # stock submitit gives up on it
    watcher = RequeueAwareWatcher()
    assert not watcher.is_done("7_0", mode="force")
    assert watcher.get_state("7_0", mode="cache") == "UNKNOWN"
    (tmp_path / "queued").unlink()
    time.sleep(0.01)  # submitit ignores a forced update within 1 ms of the last (the fake squeue can be that fast)
    assert watcher.is_done("7_0", mode="force")
    assert watcher.get_state("7_0", mode="cache") == "FAILED"


LAGGING_SACCT = """#!/bin/bash
# sacct as a lagging accounting database shows it around a requeue: the job's first attempt ended
out=$({real} "$@") || exit $?
if [ -f {dir}/lag ]; then touch {dir}/lied; printf '%s\\n' "$out" | sed -E 's/^([0-9_]+)[|][A-Z_]+/\\1|FAILED/'
else printf '%s\\n' "$out"; fi
"""


def test_preempted_slurm_job_resumes_from_its_checkpoint(slurm, tmp_path, cache_dir):
    """USR2 (SLURM's warning before preemption) -> checkpoint -> requeue -> resume, with the sweep waiting
    throughout, even while sacct still reports the first attempt FAILED (here from a wrapper that lags)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text(LAGGING_SACCT.format(real=shutil.which("sacct"), dir=tmp_path))
    (bin_dir / "sacct").chmod(0o755)
    path = sweep_file(tmp_path, {"seed": [0]}, ["experiment=smoke", "trainer.max_tokens=400_000",
                                                  "trainer.checkpoint_every_n_steps=50", "trainer.eval_tokens=0",
                                                  "trainer.progress_bar=false", f"cache_dir={cache_dir}"])
    sweep_dir = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "tcx.cli.sweep", str(path), "hydra/launcher=slurm",
                             f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.cpus_per_task=1",
                             "hydra.launcher.mem_gb=2"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    ckpt = sweep_dir / "0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), "the job never wrote its first checkpoint"
    (job,) = submitted_tasks(sweep_dir)
    (tmp_path / "lag").touch()
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    # Requeued jobs wait ~120 s (BeginTime). Hold it pending until the sweep has read the lagging sacct,
    # then past submitit's 15 s wait for a result file, and only then let it start.
    while time.time() < deadline and proc.poll() is None:
        state = subprocess.run(["squeue", "-h", "-j", job.split("_")[0], "-o", "%T"], capture_output=True,
                               text=True).stdout.split()
        if state == ["PENDING"]:
            break
        time.sleep(0.2)
    (tmp_path / "lied").unlink(missing_ok=True)
    while not (tmp_path / "lied").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(17)
    assert proc.poll() is None, "the sweep stopped waiting on the requeued job:\n" + proc.communicate()[0][-3000:]
    assert (tmp_path / "lied").exists(), "the sweep never asked sacct while the job was pending"
    subprocess.run(["scontrol", "update", f"JobId={job.split('_')[0]}", "StartTime=now"], check=True)
    (tmp_path / "lag").unlink()
    output = proc.communicate(timeout=max(10, deadline - time.time()))[0]
    assert proc.returncode == 0, output[-3000:]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0, "the requeued job started again from step 0"
    assert metrics["tokens"] == 400_000 // 1024 * 1024
    assert sacct_states(job) == ["COMPLETED"]


@pytest.mark.parametrize("pack", [True, False])
def test_grid_values_reach_hydra_as_the_values_written(tmp_path, pack):
    """`null` in a grid is None for the run (not the string 'None'), strings stay strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (tmp_path / "s.yaml").write_text("name: s\ngrid:\n  dictionary.d_sae: [null, 64]\n"
                                     "  dictionary.input_site: [mlp_in, 'null']\n")
    spec = SweepSpec.load(tmp_path / "s.yaml")
    spec.pack = pack
    parsed = OverridesParser.create().parse_overrides(multirun_overrides(spec))
    values = {o.key_or_group: o.value() for o in parsed}
    if pack:
        bank = values["bank"]
        assert [e["d_sae"] for e in bank] == [None, None, 64, 64]
        assert [e["input_site"] for e in bank] == ["mlp_in", "null", "mlp_in", "null"]
    else:
        assert list(values["dictionary.d_sae"].list) == [None, 64]
        # (in a sweep list Hydra keeps a quoted item as QuotedString until it applies it: a str)
        assert [getattr(v, "text", v) for v in values["dictionary.input_site"].list] == ["mlp_in", "null"]
        assert type(values["dictionary.input_site"].list[1]).__name__ == "QuotedString"


@pytest.mark.parametrize("pack", [True, False])
def test_awkward_strings_reach_hydra_unchanged(pack):
    """Quoted the way Hydra's grammar reads back: non-ASCII, backslashes (also last), quotes, tabs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = ["données", "C:\\data\\x", "end\\", "it's", "a\\'b", 'say "hi"', "tab\there", "x, y", "[1]"]
    spec = SweepSpec("s", {"dictionary.input_site": texts}, pack=pack)
    (parsed,) = OverridesParser.create().parse_overrides(multirun_overrides(spec))
    if pack:
        assert [e["input_site"] for e in parsed.value()] == texts
    else:
        assert [getattr(v, "text", v) for v in parsed.value().list] == texts


def test_a_job_that_never_started_is_named_by_its_number(tmp_path):
    from tcx.sweeps.collect import collect
    for job in ("1", "2"):
        (tmp_path / job).mkdir()
        (tmp_path / job / "metrics.json").write_text('{"l0": 1, "fvu": 0.5}')
    summary = collect(tmp_path, "s", expected_jobs=3)
    assert [(p["job"], p["status"]) for p in summary["points"]] == [(0, "failed"), (1, "done"), (2, "done")]
    assert "never started" in summary["points"][0]["error"]


def test_two_task_ddp_job_on_slurm(slurm, tmp_path, cache_dir):
    """tasks_per_node=2: SLURM starts two processes that train one dictionary together, each
    running the model on half of the windows."""
    path = sweep_file(tmp_path, {"dictionary.l1_coeff": [0.1]},
                      [*small(cache_dir), "trainer.max_tokens=16384", "trainer.accelerator=cpu",
                       "trainer.devices=2", "trainer.strategy=ddp"])
    out = tcx_sweep(str(path), "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 's'}",
                    "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (point,) = json.loads((tmp_path / "s" / "sweep.json").read_text())["points"]
    assert point["status"] == "done" and point["metrics"]["tokens"] == 16384
    assert 16384 / 2 <= point["metrics"]["model_tokens"] < 1.05 * 16384 / 2
    for job in submitted_tasks(tmp_path / "s"):
        assert sacct_states(job) == ["COMPLETED"], job


def test_a_packed_jobs_points_are_its_member_folders_not_a_run_moved_aside(tmp_path):
    """`resume=false` moves an old run into `old-<time>/`, members' folders with it: sweep.json
    must not count it, nor the run's own machinery, as points."""
    from tcx.run_dir import member_dirs
    from tcx.sweeps.collect import points_of
    job = tmp_path / "0"
    for folder, file in [("sae-l1_2", "metrics.json"), ("transcoder-l1_5", "error.json"),
                         ("old-20261126-101010/sae-l1_2", "metrics.json"), ("checkpoints", "last.ckpt"),
                         ("wandb", "debug.log"), (".hydra", "config.yaml"), ("notes", "readme.txt")]:
        (job / folder).mkdir(parents=True)
        (job / folder / file).write_text("{}")
    assert points_of(job) == member_dirs(job) == [job / "sae-l1_2", job / "transcoder-l1_5"]
    unpacked = tmp_path / "1"
    (unpacked / "checkpoints").mkdir(parents=True)
    (unpacked / "metrics.json").write_text("{}")
    assert points_of(unpacked) == [unpacked], "an unpacked job is its own point"


def test_a_member_folder_given_to_a_cli_unquoted_reaches_hydra_whole():
    """`tcx-eval run=<sweep>/0/l1_coeff=0.3-k=8`, `tcx-circuit prompt=def foo(x): ...` as typed:
    Hydra's grammar refuses a bare '=' or '(' in a value, so the CLIs quote it; lists and values
    already quoted are the user's to write."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from tcx.cli.common import quote_paths

    typed = ["run=out/0/l1_coeff=0.3-k=8", "out_dir=it's/a=b\\", "max_tokens=4096", "dictionaries=[a, b]",
             "hydra/launcher=slurm", "prompt=def foo(x): return {x}"]
    parsed = OverridesParser.create().parse_overrides(quote_paths(typed))
    assert [o.value() for o in parsed] == ["out/0/l1_coeff=0.3-k=8", "it's/a=b\\", 4096, ["a", "b"], "slurm",
                                           "def foo(x): return {x}"]
    with pytest.raises(Exception, match="mismatched input '='"):
        OverridesParser.create().parse_overrides(typed[:1])


def test_a_rerun_into_a_sweep_dir_with_another_grid_is_refused(tmp_path):
    """It used to start the new bank in the old job's folder, be refused there, and report the old
    points, with their metrics, as the new sweep's (exit 0)."""
    from tcx.sweeps.rerun import check_same_sweep

    sweep_dir = tmp_path / "s"
    check_same_sweep(sweep_dir, SweepSpec.load(sweep_file(tmp_path, {"dictionary.l1_coeff": [0.03, 0.3]}, [])))
    changed = sweep_file(tmp_path, {"dictionary.l1_coeff": [0.03, 1.0]}, [])
    out = tcx_sweep(str(changed), f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 1 and "holds a sweep with other settings (grid:" in out.stderr, out.stderr[-2000:]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep_spec.json"]


def test_a_job_refused_in_this_rerun_fails_its_points_though_they_finished_before(tmp_path):
    from tcx import metrics_file
    from tcx.sweeps.collect import collect

    member = tmp_path / "0" / "l1_coeff=0.3"
    member.mkdir(parents=True)
    metrics_file.write(member, {"l0": 5.0, "fvu": 0.2})
    assert collect(tmp_path, "t", 1)["done"] == 1
    started = time.time() - 1
    (tmp_path / "0" / "error.json").write_text(json.dumps({"error": "ConfigError: a different `lr`"}))
    summary = collect(tmp_path, "t", 1, started)
    assert summary["failed"] == 1 and summary["points"][0]["error"] == "ConfigError: a different `lr`"
    assert collect(tmp_path, "t", 1, time.time() + 5)["done"] == 1  # an error.json of an earlier invocation
