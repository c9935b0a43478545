"""The default main job (`tcx-train`) end to end, with where the time goes: the model's forward
(inside fetching a batch), the dictionary step (forward, backward, optimiser), the held-out
evaluation at the end (with the members' output files), and the rest (start-up, model load,
checkpoints). Runs side by side in one go:

    python benchmarks/main_job.py steps    # dense steps (TCX_SPARSE=0, tcx before #16) vs sparse: ~20 min
    python benchmarks/main_job.py cache    # live vs trainer.activation_cache=true, 1st and 2nd run: ~30 min
    python benchmarks/main_job.py cache trainer.max_tokens=500000
    python benchmarks/main_job.py commit HEAD~1   # that commit's tcx (git archive), then this tree's: ~25 min
    python benchmarks/main_job.py bf16     # float32, then trainer.precision=bf16-mixed trainer.model_dtype=bfloat16

`cache` writes about 3 GB per million tokens to <cache_dir>/activations and removes what it wrote.
Every run but the cache's second starts without evaluation baselines (<cache_dir>/baselines/), as a
first run would (benchmarks/cold.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cold import CACHE, baselines_aside, forget_baselines

REPO = Path(__file__).resolve().parents[1]
PHASES = {  # phase -> a pattern for its row in Lightning's simple profiler
    "model forward (batch fetch)": r"train_dataloader_next",
    "dictionary step": r"run_training_batch",
    "held-out evaluation": r"\[Callback\]MemberOutputs[^|]*\.on_train_end",
}


BF16 = ["trainer.precision=bf16-mixed", "trainer.model_dtype=bfloat16"]


def run(sparse: str, overrides: list[str], out: Path, tree: Path = REPO, cold: bool = True) -> dict[str, float]:
    """One `tcx-train` of the tcx in `tree` (`python -m` imports the package from its cwd). `cold`:
    without the evaluation baselines an earlier run kept (<cache_dir>/baselines/), as a first run."""
    if cold:
        forget_baselines()
    env = {**os.environ, "TCX_SPARSE": sparse}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tcx.cli.train", f"hydra.run.dir={out}",
                           "trainer.profiler=simple", "trainer.progress_bar=false", "logger=csv", *overrides],
                          capture_output=True, text=True, cwd=tree, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    times = {"wall": wall}
    for phase, pattern in PHASES.items():  # (the profiler's table is printed twice: take the first)
        row = re.search(rf"{pattern}\s*\|\s*[\d.e-]+\s*\|\s*\d+\s*\|\s*([\d.e-]+)", proc.stdout + proc.stderr)
        times[phase] = float(row.group(1)) if row else 0.0  # (an older commit may not have the row)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("main ")][-1].split()
    times["tok/s"] = float(summary[6].replace(",", ""))
    times["L0"], times["FVU"] = float(summary[1]), float(summary[2])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="e.g. python benchmarks/main_job.py cache trainer.max_tokens=500000")
    parser.add_argument("mode", choices=["steps", "cache", "commit", "bf16"])
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="tcx-train overrides for every run; with commit, the commit first")
    args = parser.parse_args()
    mode, overrides = args.mode, args.overrides
    if mode == "commit" and not overrides:
        parser.error("commit needs the commit to compare with: python benchmarks/main_job.py commit HEAD~1")
    runs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, baselines_aside():
        if mode == "commit":  # that commit's tree, then this one's
            rev, overrides = overrides[0], overrides[1:]
            tree = Path(tmp) / "tree"
            tree.mkdir()
            archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            runs[rev] = run("auto", overrides, Path(tmp) / "before", tree)
            runs["this tree"] = run("auto", overrides, Path(tmp) / "after")
        elif mode == "bf16":  # float32 throughout, then bf16 matrix products (AVX512-BF16, AMX or a GPU)
            runs["float32 (default)"] = run("auto", overrides, Path(tmp) / "fp32")
            runs["bf16"] = run("auto", [*overrides, *BF16], Path(tmp) / "bf16")
        elif mode == "steps":
            runs["dense steps (before)"] = run("0", overrides, Path(tmp) / "dense")
            runs["sparse steps (default)"] = run("auto", overrides, Path(tmp) / "sparse")
        else:  # cache
            cache = CACHE / "activations"
            before = set(cache.glob("*"))
            runs["live"] = run("auto", overrides, Path(tmp) / "live")
            cached = [*overrides, "trainer.activation_cache=true"]
            runs["cache, 1st run (writes)"] = run("auto", cached, Path(tmp) / "first")
            runs["cache, 2nd run (reads)"] = run("auto", cached, Path(tmp) / "second", cold=False)
            for folder in set(cache.glob("*")) - before:
                size = sum(f.stat().st_size for f in folder.rglob("*.pt"))
                print(f"cache {folder}: {size / 1e9:.2f} GB (removed)")
                shutil.rmtree(folder)
    print(f"tcx-train {' '.join(overrides)} on {os.cpu_count()} CPU cores\n")
    names = list(runs)
    print("| | " + " | ".join(names) + f" | {names[0]} / {names[-1]} |")
    print("|---" * (len(names) + 2) + "|")
    for key in ["wall", *PHASES, "rest", "tok/s", "L0", "FVU"]:
        for t in runs.values():
            t["rest"] = t["wall"] - sum(t[p] for p in PHASES)
        unit = " s" if key in ("wall", "rest", *PHASES) else ""
        first, last = runs[names[0]][key], runs[names[-1]][key]
        ratio = (first / last if unit else last / first) if first and last else float("nan")
        fmt = ",.0f" if key == "tok/s" or (unit and first >= 100) else ".4g"
        print(f"| {key} | " + " | ".join(f"{t[key]:{fmt}}{unit}" for t in runs.values()) + f" | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
