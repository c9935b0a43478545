"""`tcx-export`: trained dictionaries in another tool's format, or foreign ones into tcx's.

    tcx-export outputs/train/<run> --format saelens --out exports/minilm-L3      # SAELens 6.x
    tcx-export outputs/sweeps/all-layers/<date> --format circuit-tracer --out exports/ct
    tcx-export outputs/train/<run> --format sparsify --out exports/sparsify
    tcx-export final_sparse_autoencoder_gpt2-small_blocks.8.ln2.hook_normalized_24576.pt \\
        --format tcx --out runs/paper-L8                                          # import
"""

from __future__ import annotations

import argparse
import sys

from tcx.cli.common import report_errors


@report_errors
def run(argv: list[str]) -> int:
    from tcx.runs.formats import FORMATS

    writable = [f.name for f in FORMATS if f.writable]
    parser = argparse.ArgumentParser(prog="tcx-export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs, globs, or folders in a format tcx reads")
    parser.add_argument("--format", required=True, choices=writable)
    parser.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    parser.add_argument("--model", default=None,
                        help="conf/model option, for foreign folders whose model tcx cannot tell")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    from tcx.runs.export import export

    for path in export(args.paths, args.format, args.out, args.model, args.force):
        print(f"wrote {path}")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
