"""`tcx-compare`: runs side by side, in the terminal, as compare.csv, and as a page with no server.

    tcx-compare outputs/sweeps/l1-frontier/2026-11-25_15-00-00      # a sweep dir
    tcx-compare 'outputs/train/*/*' --filter 'l0<=64' --by recovered_mean
    tcx-compare <sweep dir> --best 'l0<=32' --by recovered_mean      # prints the best run's dir
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tcx.cli.common import report_errors
from tcx.compare.gather import gather
from tcx.compare.page import page
from tcx.compare.plots import curves, frontier
from tcx.compare.table import (
    CIRCUITS,
    INTERPRETABILITY,
    SHOWN,
    as_text,
    check_metric,
    has,
    keep,
    lower_is_better,
    metric_names,
    rank,
    varied,
    write_csv,
)


@report_errors
def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tcx-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or globs")
    parser.add_argument("--filter", default=None, help="e.g. 'l0<=32' or 'l0<=32,fvu<0.3'")
    parser.add_argument("--by", default=None,
                        help="metric to rank by, best first (default: recovered_mean if the runs have it, else l0)")
    parser.add_argument("--best", default=None, metavar="FILTER",
                        help="print only the best run's dir among those passing FILTER")
    parser.add_argument("--out", default=None, help="where compare.csv/html go (default: the first path)")
    args = parser.parse_args(argv)

    runs = gather(args.paths)
    if not runs.rows:
        raise SystemExit(f"error: no finished runs under {args.paths}; left out: {runs.skipped}")
    by = args.by or ("recovered_mean" if "recovered_mean" in metric_names(runs.rows) else "l0")
    check_metric(runs.rows, by)
    if args.best is not None:
        passing = keep(runs.rows, args.best)
        best = [r for r in rank(passing, by) if has(r, by)] if passing else []
        if not best:
            print(f"error: no run passes {args.best!r}" + (f" with a value of {by}" if passing else "")
                  + f" ({len(runs.rows)} runs read)", file=sys.stderr)
            return 1
        print(best[0]["run"])
        return 0
    rows = keep(runs.rows, args.filter)
    if not rows:
        raise SystemExit(f"error: no run passes --filter {args.filter!r} ({len(runs.rows)} runs read); nothing "
                         "was written.")
    rows = rank(rows, by)
    out = Path(args.out or (args.paths[0] if Path(args.paths[0]).is_dir() else "."))
    labels = varied(rows)
    scored = [k for k in INTERPRETABILITY + CIRCUITS if any(k in r for r in rows)]  # after tcx-features/-circuit
    columns = ["run", *SHOWN, *scored, *[k for k in labels if k not in SHOWN]]
    print(as_text([{**r, "run": Path(r["run"]).name} for r in rows], columns))
    for directory, why in runs.skipped.items():
        print(f"left out {directory}: {why}")
    write_csv(rows, out / "compare.csv")
    images = []
    for y in ("recovered_mean", "fvu", "circuit_explained", "circuit_nodes80"):
        if frontier(rows, y, labels, out / f"frontier_{y}.png", higher=not lower_is_better(y)):
            images.append(out / f"frontier_{y}.png")
    if curves(rows, out / "curves.png"):
        images.append(out / "curves.png")
    page(rows, columns, images, runs.skipped, out / "compare.html")
    print(f"wrote {out / 'compare.csv'} and {out / 'compare.html'}")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
