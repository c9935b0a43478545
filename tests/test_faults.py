"""The fault matrix: what happens to a run, and to its files, when things go wrong mid-way.

Every fault is injected into a real `tcx-train` process training a bank of three different kinds
(ReLU transcoder, TopK, JumpReLU) on the tiny model. Where the run can go on, it must end with
weights bit-identical to a run that met no fault, so nothing written before the fault was lost or
silently redone differently. The README's fault table is this module.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ONCE_IN_CI
from tests.test_sweeps import REPO, submitted_tasks, sweep_file

pytestmark = ONCE_IN_CI  # none of this depends on transformer-lens: CI's first phase runs it

BANK = ("bank=[{name: relu}, {dictionary: topk, k: 8, expansion_factor: 4, name: topk},"
        " {dictionary: jumprelu, expansion_factor: 4, name: jumprelu}]")
MEMBERS = ("relu", "topk", "jumprelu")
STEPS = 64  # 65,536 tokens in batches of 1,024, a checkpoint every 4 steps
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def command(run_dir: Path, cache_dir: Path, *extra: str, python: tuple[str, ...] = ("-m", "tcx.cli.train"),
            every: int = 4):
    return [sys.executable, *python, "experiment=smoke", f"hydra.run.dir={run_dir}", f"cache_dir={cache_dir}",
            f"trainer.max_tokens={STEPS * 1024}", f"trainer.checkpoint_every_n_steps={every}",
            "trainer.progress_bar=false", "trainer.eval_tokens=0", BANK, *extra]


def train(run_dir: Path, cache_dir: Path, *extra: str, every: int = 4) -> subprocess.CompletedProcess:
    return subprocess.run(command(run_dir, cache_dir, *extra, every=every), env=ENV, capture_output=True,
                          text=True, timeout=600)


def start(run_dir: Path, cache_dir: Path, *extra: str, **kw) -> subprocess.Popen:  # kw: python=, every=
    return subprocess.Popen(command(run_dir, cache_dir, *extra, **kw), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]


def wait_for(condition, proc: subprocess.Popen, seconds: float = 240, ended_ok: bool = False) -> None:
    deadline = time.time() + seconds
    while not condition():
        if ended_ok and proc.poll() is not None:
            return
        assert proc.poll() is None, f"the run ended first:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def assert_same_weights(run: Path, reference: Path) -> None:
    for member in MEMBERS:
        a, b = load_file(str(run / member / "dictionary.safetensors")), load_file(
            str(reference / member / "dictionary.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (member, k)


def leftovers(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir) -> Path:
    """The same run, meeting no fault."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    done = train(run, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_sigkill_at_ten_random_points_each_resume_ends_bit_identical(reference, tmp_path, cache_dir):
    """Ten lives, each killed at a random moment: after its k-th checkpoint (k = 0..2, a checkpoint
    every 2 of the 64 steps; 0 is during start-up) plus a random 0-0.15 s, so kills land in
    start-up, steps and checkpoint writes, and the run is still going at the tenth."""
    rng = random.Random(20261126)
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    killed_at = []
    for _ in range(10):
        proc = start(run, cache_dir, every=2)
        for _ in range(rng.randrange(3)):
            before = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            wait_for(lambda b=before: ckpt.exists() and ckpt.stat().st_mtime_ns != b, proc, ended_ok=True)
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is not None:
            break  # it finished first (a much faster machine): fewer kills, checked below
        proc.kill()
        proc.wait()
        killed_at.append(step_of(ckpt) if ckpt.exists() else 0)
    done = train(run, cache_dir, every=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(killed_at) == 10 and len(set(killed_at)) >= 4, f"the kills did not spread over the run: {killed_at}"
    assert_same_weights(run, reference)


def start_stalling(run: Path, cache_dir: Path, marker: Path) -> subprocess.Popen:
    """A run whose third checkpoint write stops half-way: torch.save writes half of its bytes, touches
    `marker` and waits."""
    stall = (
        "import io, runpy, sys, time, torch; save = torch.save; n = [0]\n"
        "def stalled(obj, f, *a, **k):\n"
        "    if '.last.ckpt.' not in str(getattr(f, 'name', '')): return save(obj, f, *a, **k)\n"
        "    n[0] += 1\n"
        "    if n[0] < 3: return save(obj, f, *a, **k)\n"
        "    buf = io.BytesIO(); save(obj, buf); f.write(buf.getvalue()[: buf.tell() // 2]); f.flush()\n"
        f"    open({str(marker)!r}, 'w').close(); time.sleep(600)\n"
        "torch.save = stalled; sys.argv[0] = 'tcx-train'\n"
        "runpy.run_module('tcx.cli.train', run_name='__main__')\n")
    proc = start(run, cache_dir, python=("-c", stall))
    wait_for(marker.exists, proc)
    return proc


def test_sigkill_during_a_checkpoint_write_and_a_second_process_meanwhile(reference, tmp_path, cache_dir):
    """The run is held half-way through its third checkpoint write. A second process started on its
    folder is refused, naming the first. Then SIGKILL: `last.ckpt` is the second checkpoint, whole;
    the resume removes the half-written temp file and ends bit-identical (the refused process
    touched nothing either)."""
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    first = start_stalling(run, cache_dir, tmp_path / "writing")
    second = train(run, cache_dir)
    assert second.returncode == 1
    assert f"process {first.pid} on " in second.stderr and f"kill {first.pid}" in second.stderr, second.stderr
    first.kill()
    first.wait()
    (partial,) = leftovers(run)
    assert partial.parent == ckpt.parent and partial.stat().st_size > 0
    assert step_of(ckpt) == 8, "last.ckpt is the second checkpoint, whole"

    done = train(run, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a write that a killed process never finished" in done.stdout + done.stderr
    assert not leftovers(run)
    assert_same_weights(run, reference)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs (its size is set by the test)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must run the disk-full test (mount -t tmpfs failed)")
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_disk_full_stops_with_a_clear_error_and_loses_nothing(reference, small_disk, cache_dir):
    """Room for one checkpoint and the run's small files, not for a second checkpoint's temp file beside
    the first."""
    size = (reference / "checkpoints" / "last.ckpt").stat().st_size * 8 // 5
    subprocess.run(["mount", "-o", f"remount,size={size}", str(small_disk)], check=True)
    run, ckpt = small_disk / "run", small_disk / "run" / "checkpoints" / "last.ckpt"
    full = train(run, cache_dir)
    assert full.returncode == 1
    error = full.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: cannot write {ckpt}: no space left on device."), full.stderr[-2000:]
    assert "keeps its previous content" in error and "Traceback" not in full.stderr
    assert not leftovers(run), "no half-written file is left"
    assert step_of(ckpt) == 4, "the first checkpoint is intact"

    # Space is freed; the same command resumes from that checkpoint and ends as if nothing happened.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    done = train(run, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(run, reference)


def test_a_corrupt_or_truncated_checkpoint_is_named_kept_and_resume_false_starts_afresh(
        reference, tmp_path, cache_dir):
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    shutil.copytree(reference / "checkpoints", run / "checkpoints")
    whole = ckpt.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"\0" * 4096 + whole[4096:]):  # truncated, then overwritten
        ckpt.write_bytes(damaged)
        refused = train(run, cache_dir)
        assert refused.returncode == 1
        assert f"error: cannot resume from {ckpt}: the file is corrupt" in refused.stderr
        assert "resume=false" in refused.stderr
        assert ckpt.read_bytes() == damaged, "the damaged file is left as it was"

    (run / "wandb" / "offline-run-old").mkdir(parents=True)  # the old run's curves go aside with it
    done = train(run, cache_dir, "resume=false")
    assert done.returncode == 0, done.stderr[-3000:]
    (aside,) = run.glob("old-*")
    assert (aside / "checkpoints" / "last.ckpt").read_bytes() == damaged, "the old checkpoint is kept, moved aside"
    assert (aside / "wandb" / "offline-run-old").is_dir() and not (run / "wandb" / "offline-run-old").exists()
    assert_same_weights(run, reference)


def test_a_finished_run_returns_without_loading_the_model_and_missing_outputs_are_written(
        make_cfg, tmp_path, monkeypatch):
    """Rerunning a finished run (a sweep's rerun does it for every finished point) reads its results
    and loads no model. A run killed after its last checkpoint but before all of its outputs were
    written gets them on the rerun (Lightning restores that checkpoint and skips the loop)."""
    from tcx.models.native import NativeModelSpec
    from tcx.training.run import train as train_in_process

    cfg = make_cfg("trainer.max_tokens=16384", "trainer.checkpoint_every_n_steps=4", BANK)
    first = train_in_process(cfg, tmp_path)
    weights = {m: load_file(str(tmp_path / m / "dictionary.safetensors")) for m in MEMBERS}
    load = NativeModelSpec.load
    monkeypatch.setattr(NativeModelSpec, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert {m: r["l0"] for m, r in train_in_process(cfg, tmp_path).items()} == {m: r["l0"] for m, r in first.items()}

    for name in ("metrics.json", "dictionary.safetensors", "eval.json"):  # killed mid-way through topk's
        (tmp_path / "topk" / name).unlink()
    monkeypatch.setattr(NativeModelSpec, "load", load)
    again = train_in_process(cfg, tmp_path)
    assert again["topk"]["l0"] == first["topk"]["l0"] and again["topk"]["resumed_from_step"] == 16
    for m in MEMBERS:
        b = load_file(str(tmp_path / m / "dictionary.safetensors"))
        assert all(torch.equal(weights[m][k], b[k]) for k in b), m


def test_a_nan_member_retires_alone_and_the_others_match_their_solo_runs(make_cfg, tmp_path, monkeypatch):
    from tcx.dictionaries.jumprelu import JumpReLUDictionary
    from tcx.training.run import train as train_in_process

    loss = JumpReLUDictionary.loss

    def poisoned(self, *args, **kwargs):
        out = loss(self, *args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(JumpReLUDictionary, "loss", poisoned)
    small = ("trainer.max_tokens=16384", "trainer.eval_tokens=0")
    final = train_in_process(make_cfg(*small, BANK), tmp_path / "bank")
    assert set(final) == {"relu", "topk"}
    assert "loss of jumprelu is nan" in (tmp_path / "bank" / "jumprelu" / "error.json").read_text()
    # finished, with a retired member: a rerun returns the others' results
    assert set(train_in_process(make_cfg(*small, BANK), tmp_path / "bank")) == {"relu", "topk"}
    for solo, member in (("bank=[{name: relu}]", "relu"),
                         ("bank=[{dictionary: topk, k: 8, expansion_factor: 4, name: topk}]", "topk")):
        train_in_process(make_cfg(*small, solo), tmp_path / member)
        a = load_file(str(tmp_path / "bank" / member / "dictionary.safetensors"))
        b = load_file(str(tmp_path / member / member / "dictionary.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), (member, k)


def slurm_sweep(spec: Path, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "tcx.cli.sweep", str(spec), "hydra/launcher=slurm", f"hydra.sweep.dir={sweep_dir}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]


def slurm_points(cache_dir: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", "trainer.checkpoint_every_n_steps=25", "trainer.eval_tokens=0",
            "trainer.progress_bar=false", f"cache_dir={cache_dir}", *extra]


def job_ids(sweep_dir: Path) -> dict[int, str]:
    """The SLURM id of each job of the latest submission in `sweep_dir` (`<array>_<index>`, or a plain
    id where the sweep has one job)."""
    tasks = sorted(submitted_tasks(sweep_dir), key=lambda t: tuple(map(int, t.split("_"))))
    return {int((t.split("_") + ["0"])[1]): t for t in tasks}


def test_a_sweep_cancelled_on_slurm_says_what_finished_and_its_rerun_does_only_the_rest(
        slurm, tmp_path, cache_dir):
    spec = sweep_file(tmp_path, {"trainer.max_tokens": [16384, 300_000]}, slurm_points(cache_dir))
    sweep_dir = tmp_path / "s"
    sweep = subprocess.Popen(slurm_sweep(spec, sweep_dir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    short, long = sweep_dir / "0", sweep_dir / "1"
    wait_for(lambda: (short / "metrics.json").exists() and (long / "checkpoints" / "last.ckpt").exists(), sweep)
    subprocess.run(["scancel", job_ids(sweep_dir)[1]], check=True)
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 1, output[-3000:]
    assert f"hydra.sweep.dir={sweep_dir}" in output, "the summary says how to finish the sweep"
    points = {p["job"]: p for p in json.loads((sweep_dir / "sweep.json").read_text())["points"]}
    assert points[0]["status"] == "done" and points[1]["status"] == "failed"
    assert "stopped before the end" in points[1]["error"]
    finished = (short / "metrics.json").stat().st_mtime_ns

    rerun = subprocess.run(slurm_sweep(spec, sweep_dir), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert (short / "metrics.json").stat().st_mtime_ns == finished, "the finished point was not trained again"
    assert "had already finished" in next(short.glob("*.log")).read_text() + "".join(
        p.read_text() for p in (sweep_dir / ".submitit").glob(f"{job_ids(sweep_dir)[0]}/*_log.out"))
    metrics = json.loads((long / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0 and metrics["tokens"] == 300_000 // 1024 * 1024
    summary = json.loads((sweep_dir / "sweep.json").read_text())
    assert summary["done"] == 2 and summary["failed"] == 0


def test_a_job_requeued_off_a_drained_node_resumes_from_its_checkpoint(slurm, tmp_path, cache_dir):
    """What an admin does to free a node: drain it, requeue its jobs (SLURM kills them: no warning
    signal, so the job resumes from its last periodic checkpoint), and the node (or another) runs
    them again."""
    spec = sweep_file(tmp_path, {"seed": [0]}, slurm_points(cache_dir, "trainer.max_tokens=200_000"))
    sweep_dir, node = tmp_path / "s", subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True,
                                                     text=True).stdout.split()[0]
    sweep = subprocess.Popen(slurm_sweep(spec, sweep_dir), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (sweep_dir / "0" / "checkpoints" / "last.ckpt").exists(), sweep)
    job = job_ids(sweep_dir)[0].split("_")[0]
    try:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", "Reason=tcx-fault-test"],
                       check=True)
        subprocess.run(["scontrol", "requeue", job], check=True)
        time.sleep(2)
        assert not (sweep_dir / "0" / "metrics.json").exists(), "the job was killed mid-run"
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=True)
    deadline = time.time() + 60
    while time.time() < deadline:  # a requeued job waits ~120 s (BeginTime) unless told otherwise
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
            break
        time.sleep(0.2)
    output = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0, output[-3000:]
    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] > 0, "the requeued job started again from step 0"
    assert metrics["tokens"] == 200_000 // 1024 * 1024


def test_atomic_writes_leave_the_permissions_a_plain_write_would(tmp_path):
    """A temp file is created owner-only (0600); moved into place as such, a shared cache_dir or an
    exported folder would be unreadable to the colleagues it is for."""
    import stat

    from tcx.io import _UMASK, atomic_dir, save_tensors, write_text

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    write_text(tmp_path / "a.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    assert mode(tmp_path / "a.json") == 0o666 & ~_UMASK == mode(tmp_path / "plain.json")
    (tmp_path / "a.json").chmod(0o640)  # an existing file keeps its own, as open(path, "w") does
    write_text(tmp_path / "a.json", "[]")
    assert mode(tmp_path / "a.json") == 0o640
    # safetensors' writer makes its own file, owner-only: dictionaries, exports, graphs, SmolLM2's weights
    save_tensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert mode(tmp_path / "w.safetensors") == 0o666 & ~_UMASK
    with atomic_dir(tmp_path / "export") as folder:
        (folder / "cfg.json").write_text("{}")
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "export") == 0o777 & ~_UMASK == mode(tmp_path / "plain")


class SignalDuring(L.Callback):
    """SLURM's warning signal (SIGUSR2), or another, arrives while step `at` runs."""

    def __init__(self, at: int, signum: int = signal.SIGUSR2):
        self.at, self.signum = at, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.signum)


def test_a_run_stopped_by_sigterm_says_so_and_fails(tmp_path, cache_dir):
    """`kill`, `docker stop` and systemd send SIGTERM: Lightning ended the run with status 0 and no word,
    so `tcx-train && tcx-eval` went on as if it had finished."""
    sigterm = f"+callbacks.signal={{_target_: tests.test_faults.SignalDuring, at: 10, signum: {int(signal.SIGTERM)}}}"
    stopped = train(tmp_path / "run", cache_dir, sigterm)
    assert stopped.returncode == 1, stopped.stderr[-3000:]
    assert "error: stopped by SIGTERM at step 1" in stopped.stderr and "Run the same command" in stopped.stderr
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 8  # every 4 steps
    done = train(tmp_path / "run", cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "relu" / "metrics.json").read_text())["resumed_from_step"] == 8


def test_a_checkpoint_on_slurms_warning_keeps_that_steps_resample(tmp_path, cache_dir):
    """The signal's checkpoint is written after the step's resample (step 16 restarts dead features):
    written before it, the resumed run would lack the restart and differ from one never stopped."""
    resample = "trainer.resample_every_n_tokens=16384"
    done = train(tmp_path / "reference", cache_dir, resample)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "reference" / "relu" / "metrics.json").read_text())["resampled_features"] > 0
    stopped = train(tmp_path / "run", cache_dir, resample,
                    "+callbacks.signal={_target_: tests.test_faults.SignalDuring, at: 15}")
    assert stopped.returncode == -signal.SIGUSR2, stopped.stderr[-3000:]
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 16
    done = train(tmp_path / "run", cache_dir, resample)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(tmp_path / "run", tmp_path / "reference")


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    """A read-only file system (EROFS) or no permission (EACCES; root is never refused, so simulated)
    was an OSError traceback: in tcx-eval after its whole evaluation."""
    import errno
    import tempfile

    from tcx.errors import NotWritableError
    from tcx.io import atomic_dir, write_text

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(NotWritableError, match=r"cannot write .*a\.json: Read-only file system\. Nothing was"):
        write_text(tmp_path / "a.json", "{}")
    with pytest.raises(NotWritableError, match="export: Read-only file system"), atomic_dir(tmp_path / "export"):
        pass
    assert not any(tmp_path.iterdir())
