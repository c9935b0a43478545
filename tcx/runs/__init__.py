"""Opening trained dictionaries: the one way in for evaluation, circuits, dashboards and exports.

    opened = open_runs(["outputs/sweeps/l1-frontier/<date>"])   # run dirs, sweep dirs, globs, exports
    for d in opened.dictionaries:
        d.dictionary.W_enc          # model units: acts on raw activations at d.input_hook
    opened.lm                       # the model, loaded on first use
    opened.heldout(32_768)          # held-out windows of the corpus the runs trained on

Folders in other tools' formats (SAELens, sparsify, circuit-tracer, the paper's GPT-2 pickles) open
the same way; `tcx.runs.formats` reads and writes them.
"""

from tcx.runs.open import OpenedRuns, find_sources, open_runs
from tcx.runs.record import OpenedDictionary, Placed

__all__ = ["OpenedDictionary", "OpenedRuns", "Placed", "find_sources", "open_runs"]
