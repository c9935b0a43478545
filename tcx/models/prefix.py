"""Several forwards of the same tokens that differ only from block `layer` on share the blocks before.

An evaluation runs each batch clean, zero- and mean-ablated, and once per dictionary spliced in: the
blocks before the first edited one compute the same thing every time. Inside `shared_blocks`, the
first forward runs them and keeps what each returned; later forwards get that back without running
them. transformer-lens's `start_at_layer` cannot do this: in 4.x it still runs the early blocks.

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
    """Stands in for one block: its first call runs the block and keeps its output; later calls
    return that output."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.output = None

    def forward(self, *args, **kwargs):
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
def shared_blocks(bridge: nn.Module, layer: int) -> Iterator[bool]:
    """Blocks `0 .. layer-1` run in the first forward inside and are replayed in the later ones.
    Yields whether they are (False: no list of blocks found, or `layer` <= 0). The caller keeps the
    promise that every forward inside has the same input and edits nothing before block `layer`
    (`LanguageModel.shared_prefix` checks it)."""
    held = block_list(bridge) if layer > 0 else None
    if held is None:
        yield False
        return
    originals = [held[i] for i in range(min(layer, len(held)))]
    try:
        for i, block in enumerate(originals):
            held[i] = _Kept(block)
        yield True
    finally:
        for i, block in enumerate(originals):
            held[i] = block
