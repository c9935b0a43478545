"""`tcx-circuit`: an attribution graph and the paper's path search for one prompt.

    tcx-circuit transcoders=outputs/sweeps/all-layers/<date> prompt="The war lasted from 1735 to 17"
    tcx-circuit transcoders='[runs/L0, runs/L5]' prompt="..." target=logit_diff \
        target.token=5 target.other=2 search.num_iters=3 search.num_branches=15
    tcx-circuit transcoders=... prompt="..." target=feature target.layer=4 target.index=12 target.pos=7
    tcx-circuit transcoders=... prompt="..." target=direction target.path=probe.pt target.pos=mean
    tcx-circuit quality runs=<sweep dir> 'prompts=["...", "..."]' target=...   # circuits across a sweep

The target is a conf/target/ option (logit, the default: the model's top prediction at the last
position; logit_diff; feature; direction), each with its own keys.

`quality` scores every run's circuits on a fixed prompt set and compares the runs at each layer
(circuit_quality.json; the scores go to each run's metrics.json for tcx-compare).
A circuit writes graph.json (circuit-tracer's schema), graph.safetensors, paths.txt, paths.json, circuit.html,
paths.html, circuit.png and summary.json under the Hydra run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tcx.circuits.config import QUALITY_COLUMNS
from tcx.cli.common import CONF_DIR, hydra_argv, report_errors, validated
from tcx.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="circuit")
@report_errors
def circuit(cfg: DictConfig) -> None:
    from tcx.circuits.run import run_circuit

    out = run_circuit(validated(cfg), HydraConfig.get().runtime.output_dir)
    s = out["summary"]
    print(f"\n{s['model']}: {s['tokens']} tokens, transcoders at layers {s['transcoder_layers']}")
    print(f"target {s['target']} = {s['target_value']:.4f}   replay error {s['replay_error']:.1e}   "
          f"row residual {s['row_residual']:.1e}")
    print(f"{s['active_features']} active features, {s['feature_nodes']} with rows, {s['pruned_nodes']} nodes "
          f"after pruning; replacement {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f} "
          f"({s['seconds']:.1f} s)")
    if s["kept_feature_nodes"] == 0:
        print(f"note: no feature node survived pruning (prune.node_threshold={cfg.prune.node_threshold} keeps "
              "the nodes holding that share of the influence): the graph shows tokens, errors and biases "
              "only. Raise it (prune.node_threshold=0.95) to keep features.")
    print("\ntop paths:")
    print((out["out_dir"] / "paths.txt").read_text())
    for name in ("graph.json", "circuit.html", "circuit.png", "paths.txt", "paths.html", "graph.safetensors"):
        print(f"wrote {out['out_dir'] / name}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="circuit_quality")
@report_errors
def quality(cfg: DictConfig) -> None:
    from tcx.circuits.quality import circuit_quality, mean
    from tcx.compare.table import as_text

    settings = validated(cfg)
    out = Path(settings.out_dir or HydraConfig.get().runtime.output_dir)
    doc = circuit_quality(settings, out)
    print(f"\n{len(doc['runs'])} runs x {len(doc['prompts'])} prompts ({doc['tokens']:,} tokens), target "
          f"{doc['target']}, {doc['seconds']:.0f} s")
    varied = sorted({k for p in doc["pairs"] for k in p["differs"]})
    rows = [{"run": Path(r["run"]).name, "layer": r["layer"], **{k: r["setting"].get(k) for k in varied},
             **{k.removeprefix("circuit_"): r.get(k) for k in QUALITY_COLUMNS}} for r in doc["runs"]]
    print(as_text(rows, ["run", "layer", *varied, *(k.removeprefix("circuit_") for k in QUALITY_COLUMNS)]))
    if doc["pairs"]:
        groups: dict[str, list[dict]] = {}
        for p in doc["pairs"]:
            groups.setdefault(" + ".join(p["differs"]) or "nothing", []).append(p)
        print(f"\npairs of runs at one layer, by what differs (features matched by decoder cosine >= "
              f"{doc['match_cosine']}; every pair is in circuit_quality.json):")
        print(as_text([{"differs": k, "pairs": len(ps), "node_overlap": mean(ps, "node_overlap"),
                        "edge_rank_corr": mean(ps, "edge_rank_correlation")} for k, ps in sorted(groups.items())],
                      ["differs", "pairs", "node_overlap", "edge_rank_corr"]))
    for name, why in doc["skipped"].items():
        print(f"left out {name}: {why}")
    print(f"wrote {out / 'circuit_quality.json'}")


def main() -> None:
    if kind := next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("target.kind=")), None):
        raise SystemExit(f"error: target.kind={kind}: the target is a config group now: target={kind} "
                         "(its keys as before: target.token=..., target.layer=..., ...).")
    if len(sys.argv) > 1 and sys.argv[1] == "quality":
        sys.argv = hydra_argv(__doc__, sys.argv[2:])
        quality()
    else:
        sys.argv = hydra_argv(__doc__, sys.argv[1:])
        circuit()


if __name__ == "__main__":
    main()
