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


class _Kept(nn.Module):
    """Stands in for a block: its first call runs the block and keeps the output; later calls
    return that output."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.output = None

    def forward(self, *args, **kwargs):
        if self.output is None:
            self.output = self.block(*args, **kwargs)
        return self.output


class Shared:
    """The blocks of one `shared_blocks` context: before each forward, `before(b)` puts the stand-ins
    in place of blocks `0 .. b-1` and the blocks themselves from `b` on. A block a forward edits or
    reads is always the model's own module, under its own name (transformer-lens 3.9 finds hooks by
    walking the modules' names when they are added)."""

    def __init__(self, held: nn.ModuleList):
        self.held, self.blocks = held, list(held)
        self.kept = [_Kept(block) for block in self.blocks]

    def before(self, below: int) -> None:
        for i, block in enumerate(self.blocks):
            self.held[i] = self.kept[i] if i < below else block

    def restore(self) -> None:
        self.before(0)


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
def shared_blocks(bridge: nn.Module) -> Iterator[Shared | None]:
    """Yields the `Shared` whose `before` the caller calls before each forward inside (None: no list
    of blocks found, nothing is shared). Every forward inside must have the same input
    (`LanguageModel.shared_prefix` checks it)."""
    held = block_list(bridge)
    if held is None:
        yield None
        return
    shared = Shared(held)
    try:
        yield shared
    finally:
        shared.restore()
