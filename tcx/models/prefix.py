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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from tcx.models.spec import layer_of


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
    """The blocks of one `shared_blocks` context: before each forward, `before(its hooks)` puts the
    stand-ins in place of the blocks before its first hook and the blocks themselves from there on.
    A block a forward edits or reads is always the model's own module, under its own name
    (transformer-lens 3.9 finds hooks by walking the modules' names when they are added)."""

    def __init__(self, held: nn.ModuleList):
        self.held, self.blocks = held, list(held)
        self.kept = [_Kept(block) for block in self.blocks]

    def before(self, hooks: Sequence[str]) -> None:
        """Set up a forward with these hooks: stand-ins before the first block any of them sits in
        (every block for a forward with no hooks, none where one sits before the blocks)."""
        layers = (-1 if (layer := layer_of(h)) is None else layer for h in hooks)
        below = min(layers, default=len(self.blocks))
        for i, block in enumerate(self.blocks):
            self.held[i] = self.kept[i] if i < below else block

    def restore(self) -> None:
        for i, block in enumerate(self.blocks):
            self.held[i] = block


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
