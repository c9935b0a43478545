"""How much packing saves: the l1-frontier sweep (10 dictionaries) packed into one bank, against one
job per point, on the same tokens, timed end to end through tcx-sweep.

    python benchmarks/sweep_packing.py --tokens 200000      # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(pack: bool, tokens: int, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tcx.cli.sweep", str(REPO / "sweeps" / "l1-frontier.yaml"),
                    f"sweep.pack={str(pack).lower()}", f"hydra.sweep.dir={out}", f"trainer.max_tokens={tokens}",
                    "trainer.eval_tokens=8192", "trainer.progress_bar=false", "logger=csv"],
                   check=False, capture_output=True, cwd=REPO)
    return time.perf_counter() - start, json.loads((out / "sweep.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        packed_s, packed = run(True, args.tokens, Path(tmp) / "packed")
        unpacked_s, unpacked = run(False, args.tokens, Path(tmp) / "unpacked")
    def l0s(summary: dict) -> list[float]:
        return sorted(round(p["metrics"]["l0"], 4) for p in summary["points"] if p["status"] == "done")

    same = l0s(packed) == l0s(unpacked)
    print(f"l1-frontier, 10 points x {args.tokens:,} tokens")
    print(f"  packed   (1 job, 1 model pass): {packed_s:7.1f} s  ({packed['done']} done)")
    print(f"  unpacked (10 jobs)            : {unpacked_s:7.1f} s  ({unpacked['done']} done)")
    print(f"  packed is {unpacked_s / packed_s:.2f}x faster; the same 10 L0 values either way: {same}")


if __name__ == "__main__":
    main()
