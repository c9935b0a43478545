"""`tcx-eval`: sparsity, reconstruction and spliced fidelity of trained dictionaries.

    tcx-eval run=outputs/train/2026-11-25/15-02-11_minilm-L3-mlp_in-to-mlp_out
    tcx-eval 'dictionaries=[runs/layer0, runs/layer1]'     # spliced together: joint numbers
    tcx-eval run=exports/saelens-L3                          # any folder tcx reads (tcx.runs.formats)
    tcx-eval run=outputs/multirun/<date>/<time>/0/l1_coeff=3.0   # a member: its '=' is quoted for Hydra
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, hydra_argv, report_errors, validated
from tcx.config import register_configs

register_configs()

COLUMNS = ["l0", "fvu", "cos", "unfired_fraction", "dense_fraction", "loss_clean", "loss_spliced",
           "loss_zero_ablated", "loss_mean_ablated", "recovered_zero", "recovered_mean", "kl"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@report_errors
def evaluate_app(cfg: DictConfig) -> None:
    from tcx.evaluation.run import evaluate

    validated(cfg)
    paths = ([cfg.run] if cfg.run else []) + list(cfg.dictionaries)
    results = evaluate(paths, cfg.max_tokens, cfg.batch_windows, cfg.dense_threshold, cfg.out_dir,
                       cfg.plots, cfg.model)
    rows = results["dictionaries"]
    print(f"\nfidelity: {next(iter(rows.values()))['fidelity_metric']}")
    names = [Path(name).name for name in rows]
    w = min(24, max(10, *map(len, names)))
    if len(rows) > 1:  # which column is which
        print(f"{'':>18}  " + "  ".join(f"{name[-w:]:>{w}}" for name in names))
    for key in COLUMNS:
        values = [r.get(key) for r in rows.values()]
        if any(v is not None for v in values):
            cells = (f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}" for v in values)
            print(f"{key:>18}  " + "  ".join(cells))
    if len(rows) > 1 and (joint := results["joint"]) is not None:
        print(f"joint: spliced {joint['loss_spliced']:.4f}  clean {joint['loss_clean']:.4f}  "
              f"recovered_zero {joint['recovered_zero']:.4f}  recovered_mean {joint['recovered_mean']:.4f}")
    for path in results["written"]:
        print(f"wrote {path}")


def main() -> None:
    sys.argv = hydra_argv(__doc__, sys.argv[1:])
    evaluate_app()


if __name__ == "__main__":
    main()
