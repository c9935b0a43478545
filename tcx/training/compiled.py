"""`trainer.compile`: a dictionary's training step compiled whole.

On a GPU an eager step of a dictionary this size (4096 rows, 6,144 features) is bound by the host:
dozens of kernel launches, each a few microseconds of Python and dispatch, around products that take
tens of microseconds. Compiled with `fullgraph=True` the step is one graph (which also proves it
reads nothing back to the host: a read would break the graph), and on CUDA `mode="reduce-overhead"`
(`trainer.compile=reduce-overhead`) captures it, forward and backward, as CUDA graphs replayed with
one launch each. The compiled step is the dense one (`sparse.sparse_enabled`); TopK's AuxK takes
all `aux_k` picks instead of counting the dead latents first (`TopKDictionary.aux_loss_unsynced`).
On a CPU compiling gains nothing, and the sparse step it rules out is the faster one.
"""

from __future__ import annotations

from tcx.dictionaries.base import Dictionary


def compile_step(dictionary: Dictionary, mode: str) -> None:
    """Compile `dictionary`'s forward (its training step: codes, output, loss) in place, in
    torch.compile's `mode`; the state dict, and so checkpoints, keep their keys."""
    dictionary.compile(fullgraph=True, mode=mode)
