"""`tcx-circuit`: an attribution graph and the paper's path search for one prompt.

    tcx-circuit transcoders=outputs/sweeps/all-layers/<date> prompt="The war lasted from 1735 to 17"
    tcx-circuit transcoders='[runs/L0, runs/L5]' prompt="..." target.kind=logit_diff \
        target.token=5 target.other=2 search.num_iters=3 search.num_branches=15
    tcx-circuit transcoders=... prompt="..." target.kind=feature target.layer=4 target.index=12 target.pos=7
    tcx-circuit transcoders=... prompt="..." target.kind=direction target.path=probe.pt target.pos=mean

Writes graph.json (circuit-tracer's schema), graph.safetensors, paths.txt, paths.json, circuit.html,
paths.html, circuit.png and summary.json under the Hydra run dir.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tcx.cli.common import CONF_DIR, report_errors, validated
from tcx.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="circuit")
@report_errors
def main(cfg: DictConfig) -> None:
    from tcx.circuits.run import run_circuit

    out = run_circuit(validated(cfg, ("target", "prune", "search")), HydraConfig.get().runtime.output_dir)
    s = out["summary"]
    print(f"\n{s['model']}: {s['tokens']} tokens, transcoders at layers {s['transcoder_layers']}")
    print(f"target {s['target']} = {s['target_value']:.4f}   replay error {s['replay_error']:.1e}   "
          f"row residual {s['row_residual']:.1e}")
    print(f"{s['active_features']} active features, {s['feature_nodes']} with rows, {s['pruned_nodes']} nodes "
          f"after pruning; replacement {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f} "
          f"({s['seconds']:.1f} s)")
    print("\ntop paths:")
    print((out["out_dir"] / "paths.txt").read_text())
    for name in ("graph.json", "circuit.html", "circuit.png", "paths.txt", "paths.html", "graph.safetensors"):
        print(f"wrote {out['out_dir'] / name}")


if __name__ == "__main__":
    main()
