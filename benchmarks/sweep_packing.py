"""How much packing saves: a sweep packed into banks (one model pass per job), against one job per
point, on the same tokens, timed end to end through tcx-sweep.

    python benchmarks/sweep_packing.py --tokens 200000      # l1-frontier, 10 dictionaries: ~20 min on 2 CPU cores
    python benchmarks/sweep_packing.py --sweep sweeps/all-layers.yaml --tokens 200000   # 6 layers, one pass
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cold import baselines_aside, forget_baselines

REPO = Path(__file__).resolve().parents[1]


def run(sweep: Path, pack: bool, tokens: int, out: Path) -> tuple[float, dict]:
    """One sweep from cold: its points share evaluation baselines, the two sweeps do not."""
    forget_baselines()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tcx.cli.sweep", str(sweep),
                    f"sweep.pack={str(pack).lower()}", f"hydra.sweep.dir={out}", f"trainer.max_tokens={tokens}",
                    "trainer.eval_tokens=8192", "trainer.progress_bar=false", "logger=csv"],
                   check=False, capture_output=True, cwd=REPO)
    return time.perf_counter() - start, json.loads((out / "sweep.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "l1-frontier.yaml")
    parser.add_argument("--tokens", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, baselines_aside():
        packed_s, packed = run(args.sweep, True, args.tokens, Path(tmp) / "packed")
        unpacked_s, unpacked = run(args.sweep, False, args.tokens, Path(tmp) / "unpacked")
    def l0s(summary: dict) -> list[float]:
        return sorted(round(p["metrics"]["l0"], 4) for p in summary["points"] if p["status"] == "done")

    same = l0s(packed) == l0s(unpacked)
    n = len(unpacked["points"])
    jobs = len({p["job"] for p in packed["points"]})
    print(f"{args.sweep.stem}, {n} points x {args.tokens:,} tokens")
    print(f"  packed   ({jobs} job(s), one model pass each): {packed_s:7.1f} s  ({packed['done']} done)")
    print(f"  unpacked ({n} jobs)                        : {unpacked_s:7.1f} s  ({unpacked['done']} done)")
    print(f"  packed is {unpacked_s / packed_s:.2f}x faster; the same {n} L0 values either way: {same}")


if __name__ == "__main__":
    main()
