"""How long an attribution graph takes: a 32-token prompt, transcoders at every MiniLM layer.

    tcx-sweep sweeps/all-layers.yaml                        # the six transcoders (once)
    python benchmarks/circuit_minilm.py outputs/sweeps/all-layers/<date>

Prints the wall time of each stage (clean run + replay check, the graph's rows, pruning, the path
search, the feature cards) and the graph's size. No peer builds graphs for an encoder
(circuit-tracer needs a causal LM it can load), so the yardstick is the issue's budget: under a
minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tcx.circuits.cards import Cards
from tcx.circuits.direct import Direct
from tcx.circuits.graph import attribute
from tcx.circuits.paths import search
from tcx.circuits.prune import prune_graph, scores
from tcx.circuits.replacement import ReplacementModel
from tcx.circuits.run import prompt_tokens
from tcx.circuits.sources import Sources
from tcx.circuits.targets.direction import DirectionConfig
from tcx.runs import open_runs

PROMPT = ("Return the number of seconds between two dates, as a float; raise ValueError when the "
          "second date comes first, and TypeError when either is not a datetime object.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("transcoders", nargs="+")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--max-feature-nodes", type=int, default=4096)
    args = parser.parse_args()
    runs = open_runs(args.transcoders)
    lm = runs.lm
    tokens = prompt_tokens(lm, PROMPT)
    tokens = torch.cat([tokens[: args.tokens - len(lm.suffix_ids)], torch.tensor(lm.suffix_ids, dtype=tokens.dtype)])
    probe_file = Path(tempfile.mkdtemp()) / "probe.pt"
    torch.save({"direction": torch.randn(lm.spec.d_model, generator=torch.Generator().manual_seed(0))}, probe_file)
    times = {}
    t = time.perf_counter()
    rm = ReplacementModel.build(lm, runs.dictionaries, tokens, getattr(torch, args.dtype))
    times["clean run + replay check"] = time.perf_counter() - t
    target = DirectionConfig(path=str(probe_file), pos="mean").resolve(rm)
    t = time.perf_counter()
    graph = attribute(rm, target, args.max_feature_nodes, progress=False)
    times["graph rows"] = time.perf_counter() - t
    t = time.perf_counter()
    kept = prune_graph(graph)
    s = scores(graph.adjacency, graph.target_weights, [n.kind for n in graph.nodes])
    times["prune + scores"] = time.perf_counter() - t
    t = time.perf_counter()
    paths = search(Direct(rm, Sources(rm)), target, target.node, 3, 15, progress=False)
    times["path search (3 x 15)"] = time.perf_counter() - t
    t = time.perf_counter()
    nodes = [n for i, n in enumerate(graph.nodes) if kept.nodes[i] and n.kind == "feature"]
    Cards(rm).cards(nodes, rm.n_layers)
    times[f"cards ({len(nodes)} features)"] = time.perf_counter() - t
    print(f"{lm.spec.name}: {len(tokens)} tokens, transcoders at layers {sorted(rm.codes)}, replay {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{graph.extra['active_features']} active features, {graph.extra['feature_nodes']} rows, "
          f"{len(graph.nodes)} nodes, {int(kept.nodes.sum())} after pruning, {len(paths.paths)} paths; "
          f"replacement {s['replacement']:.3f} completeness {s['completeness']:.3f}; "
          f"row residual {graph.row_residual:.1e}")
    for stage, seconds in times.items():
        print(f"{stage:>28}  {seconds:7.2f} s")
    print(f"{'total':>28}  {sum(times.values()):7.2f} s   (budget: 60 s)")


if __name__ == "__main__":
    main()
