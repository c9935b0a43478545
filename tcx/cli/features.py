"""`tcx-features`: feature dashboards, automatic interpretability scores, and the blind study.

    tcx-features run=outputs/train/<date>/<time>_minilm-L3-mlp_in-to-mlp_out    # features.html + .json
    tcx-features run=<sweep dir> max_tokens=1048576                                # every run, one model pass
    tcx-features study 'runs=[<transcoder run>, <sae run>]' n=50 seed=0           # sheet.html + key.json
    tcx-features score answers.json                                                # unblind: the paper's table
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, hydra_argv, report_errors, validated
from tcx.config import register_configs
from tcx.errors import ConfigError

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="features")
@report_errors
def features(cfg: DictConfig) -> None:
    from tcx.features.run import read_features

    settings = validated(cfg)
    paths = ([settings.run] if settings.run else []) + list(settings.dictionaries)
    out = read_features(paths, settings, settings.features or None, settings.out_dir, settings.model)
    print(f"\n{out['tokens']:,} held-out tokens in {out['seconds']:.0f} s ({out['tokens_per_second']:,.0f} tok/s, "
          f"peak RSS {out['peak_rss_mb']:,.0f} MB)")
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
    print(f"{'dictionary':<50} {'live':>6} {'scored':>7} {'detection':>10} {'fuzzing':>8} {'ctx-free':>9}")
    for name, s in out["dictionaries"].items():
        print(f"{name[-50:]:<50} {s['live']:>6} {s['scored_features']:>7} {fmt(s['detection']):>10} "
              f"{fmt(s['fuzzing']):>8} {fmt(s['context_free']):>9}")
    for path in out["written"]:
        print(f"wrote {path}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="study")
@report_errors
def study(cfg: DictConfig) -> None:
    from pathlib import Path

    from tcx.features.study import make_study

    settings = validated(cfg)
    made = make_study(settings, Path(settings.out or HydraConfig.get().runtime.output_dir))
    print(f"study {made['study']}: {made['rows']} rows\nopen {made['sheet']} in a browser, answer every row, save "
          f"answers.json, then: tcx-features score answers.json\n(the key is {made['key']}: do not open it before)")


@report_errors
def score(args: list[str]) -> None:
    from tcx.features.study import print_table, score

    usage = "usage: tcx-features score <answers.json> [<key.json>]"
    if args and args[0] in ("-h", "--help"):
        print(f"{usage}\n\nUnblinds a study: the share of features you called interpretable, per dictionary.")
        return
    if not args or len(args) > 2:
        raise ConfigError(usage)
    print(print_table(score(*args)))


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command == "score":
        score(sys.argv[2:])
    elif command == "study":
        sys.argv = hydra_argv(__doc__, sys.argv[2:])
        study()
    else:
        sys.argv = hydra_argv(__doc__, sys.argv[1:])
        features()


if __name__ == "__main__":
    main()
