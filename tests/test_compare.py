"""tcx-compare on real runs: table, csv, best-run selection, the page, and bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcx.compare.gather import gather
from tcx.compare.plots import pareto
from tcx.compare.table import keep, rank, varied
from tcx.errors import ConfigError
from tcx.training.run import train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    from hydra import compose, initialize_config_dir

    from tcx.cli.common import CONF_DIR

    root = tmp_path_factory.mktemp("compare")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=smoke", f"cache_dir={cache_dir}", "trainer.progress_bar=false", "trainer.max_tokens=8192",
            "trainer.eval_tokens=2048", "bank=[{l1_coeff: 0.01, name: a}, {l1_coeff: 0.3, name: b},"
            " {dictionary: topk, k: 4, name: c}]"])
    train(cfg, root / "0")
    (root / "1").mkdir()
    (root / "1" / "config.yaml").write_text((root / "0" / "a" / "config.yaml").read_text())
    (root / "1" / "metrics.json").write_text('{"l0": 3')  # half-written: skipped, never a crash
    return root


def test_gather_reads_members_and_skips_half_written_runs(sweep):
    runs = gather([str(sweep)])
    assert sorted(r["run"].rsplit("/", 1)[1] for r in runs.rows) == ["a", "b", "c"]
    assert list(runs.skipped) == [str(sweep / "1")]
    kinds = {r["run"].rsplit("/", 1)[1]: r["kind"] for r in runs.rows}
    assert kinds == {"a": "ReLU transcoder", "b": "ReLU transcoder", "c": "TopK transcoder"}


def test_filter_and_rank(sweep):
    rows = gather([str(sweep)]).rows
    l0 = {r["run"].rsplit("/", 1)[1]: r["l0"] for r in rows}
    assert [r["run"] for r in keep(rows, "l0<=4")] == [r["run"] for r in rows if r["l0"] <= 4]
    ranked = rank(rows, "l0")
    assert [r["l0"] for r in ranked] == sorted(l0.values())
    best = rank(rows, "recovered_mean")
    assert best[0]["recovered_mean"] == max(r["recovered_mean"] for r in rows)
    with pytest.raises(ConfigError, match=r"no metric 'nope'; available: .*recovered_mean"):
        rank(rows, "nope")


def test_pareto_front():
    pts = [(1, 0.2), (2, 0.5), (3, 0.4), (4, 0.9), (5, 0.9)]
    assert pareto(pts, higher_is_better=True) == [(1, 0.2), (2, 0.5), (4, 0.9)]
    assert pareto([(1, 0.9), (2, 0.5), (3, 0.7)], higher_is_better=False) == [(1, 0.9), (2, 0.5)]


def test_cli_writes_csv_page_and_picks_the_best(sweep, tmp_path):
    out = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "left out" in out.stdout and "TopK transcoder" in out.stdout
    with open(tmp_path / "compare.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    page = (tmp_path / "compare.html").read_text()
    assert page.count("data:image/png;base64,") >= 4  # two frontiers, curves, densities: all inline
    assert "http://" not in page and "https://" not in page and "<table id=\"runs\">" in page
    rows = json.loads(page.split('id="data">')[1].split("</script>")[0])
    assert len(rows) == 3
    best = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), "--best", "l0<=1000",
                           "--by", "recovered_mean"], capture_output=True, text=True)
    want = max(rows, key=lambda r: r["recovered_mean"])["run"]
    assert best.returncode == 0 and best.stdout.strip() == want
    bad = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), "--by", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "available:" in bad.stderr
    for flag in ("--best", "--filter"):  # it said "no metric 'recovered_mean'; available: ."
        none = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(sweep), flag, "l0<=0",
                               "--out", str(tmp_path / "none")], capture_output=True, text=True)
        assert none.returncode == 1 and "no run passes" in none.stderr and "(3 runs read)" in none.stderr, none.stderr


def test_empty_dir_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 1 and "no runs under" in out.stderr


def test_compare_works_from_wandb_offline_logs_alone(make_cfg, tmp_path, monkeypatch):
    from tcx.compare.plots import history

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr("tcx.training.loggers.has_wandb_credentials", lambda: False)
    train(make_cfg("logger=wandb", "trainer.max_tokens=8192", "trainer.eval_tokens=2048",
                   "bank=[{l1_coeff: 0.05, name: a}, {l1_coeff: 0.5, name: b}]"), tmp_path)
    expected = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b")}
    for n in ("a", "b"):  # only the W&B logs remain
        (tmp_path / n / "metrics.json").unlink()
        (tmp_path / n / "config.yaml").unlink()
    runs = gather([str(tmp_path)])
    got = {r["run"].rsplit("/", 1)[1]: r for r in runs.rows}
    assert set(got) == {"a", "b"}
    for n in ("a", "b"):
        for key in ("l0", "fvu", "recovered_mean", "tokens"):
            assert got[n][key] == pytest.approx(expected[n][key]), (n, key)
        assert got[n]["dictionary.l1_coeff"] == {"a": 0.05, "b": 0.5}[n]
        assert [row["tokens"] for row in history(tmp_path / n)][-1] == 8192


def fake_run(directory, **metrics) -> None:
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text("dictionary: {_target_: tcx.dictionaries.relu.ReLUConfig}\n")
    (directory / "metrics.json").write_text(json.dumps({"l0": 10, "fvu": 0.2, **metrics}))


def test_a_run_moved_aside_is_not_compared(tmp_path):
    """`resume=false` keeps the earlier run in `<run>/old-<time>/`: it is no longer a run of the sweep."""
    fake_run(tmp_path / "0", recovered_mean=0.70)
    fake_run(tmp_path / "0" / "old-20261201-120000", recovered_mean=0.95)
    assert [r["run"] for r in gather([str(tmp_path)]).rows] == [str(tmp_path / "0")]
    # named on its own, a folder moved aside is still readable
    assert len(gather([str(tmp_path / "0" / "old-20261201-120000")]).rows) == 1


def test_runs_without_the_ranking_metric_stay_in_the_table_last(tmp_path):
    fake_run(tmp_path / "a", recovered_mean=0.7, unfired_fraction=0.01, train_l0=9.0)
    fake_run(tmp_path / "b", recovered_mean=0.9, unfired_fraction=0.60, train_l0=11.0)
    fake_run(tmp_path / "c")  # trainer.eval_tokens=0: no held-out fidelity
    rows = gather([str(tmp_path)]).rows
    name = lambda ranked: [r["run"].rsplit("/", 1)[1] for r in ranked]  # noqa: E731
    assert name(rank(rows, "recovered_mean")) == ["b", "a", "c"]
    assert name(rank(rows, "unfired_fraction")) == ["a", "b", "c"], "fewer unfired features is better"
    assert name(rank(rows, "train_l0")) == ["a", "b", "c"], "train_<metric> ranks as <metric> does"
    out = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(tmp_path), "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / "compare.csv") as f:
        assert [Path(r["run"]).name for r in csv.DictReader(f)] == ["b", "a", "c"]
    best = subprocess.run([sys.executable, "-m", "tcx.cli.compare", str(tmp_path), "--best", "l0<=100",
                           "--by", "unfired_fraction"], capture_output=True, text=True)
    assert best.stdout.strip() == str(tmp_path / "a")


def test_equal_numbers_saved_as_int_and_float_do_not_vary():
    """A run saved before the dictionary group was typed holds expansion_factor 4, a later one 4.0:
    no column for a setting the runs share."""
    rows = [{"dictionary.expansion_factor": 4, "dictionary.l1_coeff": 1.0},
            {"dictionary.expansion_factor": 4.0, "dictionary.l1_coeff": 3.0}]
    assert varied(rows) == ["dictionary.l1_coeff"]
