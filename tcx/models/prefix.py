"""Several forwards of the same tokens that edit the model at different blocks share the clean blocks.

An evaluation runs each batch clean, zero- and mean-ablated, and once per dictionary spliced in: the
blocks before a run's first edited (or read) block compute what the clean run computes. Inside
`shared_blocks`, a block's output is kept from the first run that leaves it and everything before it
unedited, and handed back to every later such run without running the block; a run that edits an
earlier block runs it. transformer-lens's `start_at_layer` cannot do this: in 4.x it still runs the
early blocks.

The blocks are swapped in the wrapped model's own list of them (Hugging Face's `bert.encoder.layer`,
`model.layers`, `transformer.h`, ...; found by identity with the bridge's `blocks`), so nothing
depends on what a block takes or returns. Where the bridge holds no such list, every forward runs
everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(name: str) -> int:
    """The block a hookpoint sits in (`blocks.3.mlp.hook_in` -> 3); -1 for one outside the blocks
    (the embedding), before all of them."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else -1


class Clean:
    """Which blocks the next forward leaves unedited: `0 .. below-1` (set before each forward)."""

    below: int = 0


class _Kept(nn.Module):
    """Stands in for block `index`: in a forward that leaves it unedited it returns the output kept
    from the first such forward (running the block then); in others it runs the block."""

    def __init__(self, block: nn.Module, index: int, clean: Clean):
        super().__init__()
        self.block, self.index, self.clean = block, index, clean
        self.output = None

    def forward(self, *args, **kwargs):
        if self.index >= self.clean.below:
            return self.block(*args, **kwargs)
        if self.output is None:
            self.output = self.block(*args, **kwargs)
        return self.output


def block_list(bridge: nn.Module) -> nn.ModuleList | None:
    """The list the wrapped model calls its blocks from, or None where there is none."""
    blocks = getattr(bridge, "blocks", None)
    if not blocks:
        return None
    wrapped = getattr(bridge, "original_model", None)  # not a registered submodule of the bridge
    for module in (wrapped.modules() if isinstance(wrapped, nn.Module) else bridge.modules()):
        if (isinstance(module, nn.ModuleList) and len(module) == len(blocks)
                and all(a is b for a, b in zip(module, blocks, strict=True))):
            return module
    return None


@contextmanager
def shared_blocks(bridge: nn.Module) -> Iterator[Clean | None]:
    """Each block kept from the first forward inside that leaves it clean. Yields the `Clean` the
    caller sets before each forward (None: no list of blocks found, nothing is shared). Every forward
    inside must have the same input (`LanguageModel.shared_prefix` checks it)."""
    held = block_list(bridge)
    if held is None:
        yield None
        return
    clean, originals = Clean(), list(held)
    try:
        for i, block in enumerate(originals):
            held[i] = _Kept(block, i, clean)
        yield clean
    finally:
        for i, block in enumerate(originals):
            held[i] = block
