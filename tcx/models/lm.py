"""`LanguageModel`: a TransformerBridge with its tokenizer, run only as far as the hooks need."""

from __future__ import annotations

import contextlib
import difflib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tcx.digest import tensors_digest
from tcx.errors import ConfigError
from tcx.models.prefix import Shared, shared_blocks
from tcx.models.spec import ModelSpec


class _StopForward(Exception):
    """Raised from a hook once every requested activation is captured: the rest of the model
    (later layers, and for MiniLM a 30k-vocab head) never runs. 4x faster on MiniLM layer 3."""


class LanguageModel:
    def __init__(self, bridge: Any, spec: ModelSpec, tokenizer: Any):
        self.bridge = bridge.eval()
        self.spec = spec
        self.tokenizer = tokenizer
        self._digest: tuple[tuple, str] | None = None
        self._prefix: tuple[Tensor, Shared] | None = None
        if hasattr(tokenizer, "model_max_length"):  # we chunk long documents ourselves: no warning
            tokenizer.model_max_length = 1 << 30

    # -- tokens -------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def display(self, ids: Sequence[int]) -> dict[int, str]:
        """Each token as it reads in running text, for pages that lay tokens side by side: byte-level
        BPE tokens carry their own space; a WordPiece token gets one unless it continues a word (##)."""
        decode = getattr(self.tokenizer, "decode", None)
        if decode is None:
            return {int(i): str(int(i)) for i in ids}
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        wordpiece = backend is not None and type(backend.model).__name__ == "WordPiece"
        out = {}
        for i in map(int, ids):
            text = decode([i])
            if wordpiece:
                piece = self.tokenizer.convert_ids_to_tokens(i)
                text = piece[2:] if piece.startswith("##") else " " + text
            out[i] = text
        return out

    def special_ids(self, attr: str | None) -> list[int]:
        if attr is None:
            return []
        value = getattr(self.tokenizer, attr, None)
        if value is None:
            raise ConfigError(f"model.{attr}: the tokenizer of {self.spec.name} has no '{attr}'.")
        return [int(value)]

    @property
    def prefix_ids(self) -> list[int]:
        return self.special_ids(self.spec.prefix_token)

    @property
    def suffix_ids(self) -> list[int]:
        return self.special_ids(self.spec.suffix_token)

    # -- weights ------------------------------------------------------------------------------
    def weights_digest(self) -> str:
        """Hash of the parameters (so also their dtype): what the caches key on. Computed once per
        state of the weights (a move, a cast or an in-place edit makes a new one)."""
        tensors = list(self.bridge.state_dict().values())
        stamp = tuple((t.data_ptr(), t.dtype, t._version) for t in tensors)
        if self._digest is None or self._digest[0] != stamp:
            self._digest = (stamp, tensors_digest(tensors))
        return self._digest[1]

    # -- hooks --------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    def hook_name(self, site: str, layer: int) -> str:
        name = self.spec.hook(site, layer)
        if name not in self.bridge.hook_dict:
            near = difflib.get_close_matches(name, list(self.bridge.hook_dict), n=3)
            raise ConfigError(f"model.sites.{site}: hookpoint '{name}' does not exist in "
                              f"{self.spec.name}" + (f"; did you mean {near}?" if near else "."))
        return name

    @torch.inference_mode()
    def run_to(self, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str],
               edits: Sequence[tuple[str, Callable]] = ()) -> dict[str, Float[Tensor, "batch pos d"]]:
        """Activations at `hooks`, stopping the forward pass as soon as all are captured. `edits`
        (hooks that may rewrite activations: splices, ablations) run first, so the activations
        read are the edited model's."""
        hooks = list(dict.fromkeys(hooks))
        cache: dict[str, Tensor] = {}

        def save(act: Tensor, hook: Any, name: str) -> Tensor:
            cache[name] = act.detach()
            if len(cache) == len(hooks):
                raise _StopForward
            return act

        fwd = [*edits, *((h, functools.partial(save, name=h)) for h in hooks)]
        self._enter_forward(tokens, [name for name, _ in fwd])
        try:
            with self.bridge.hooks(fwd_hooks=fwd):
                self.bridge(tokens.to(self.device), return_type=None)
        except _StopForward:
            pass
        return cache

    def run_with_hooks(self, tokens: Int[Tensor, "batch pos"],
                       hooks: Sequence[tuple[str, Callable]], **kwargs: Any) -> Any:
        self._enter_forward(tokens, [name for name, _ in hooks])
        with self.bridge.hooks(fwd_hooks=list(hooks)):
            return self.bridge(tokens.to(self.device), **kwargs)

    @contextlib.contextmanager
    def shared_prefix(self, tokens: Int[Tensor, "batch pos"]) -> Iterator[None]:
        """Forwards of `tokens` inside run each block only until a forward that edits nothing up to
        it has kept its output (see prefix.py): an evaluation's clean, ablated and spliced runs of a
        batch share the blocks before their edits. A forward inside on other tokens is an error."""
        if self._prefix is not None:
            raise RuntimeError("LanguageModel.shared_prefix does not nest.")
        with shared_blocks(self.bridge) as shared:
            self._prefix = (tokens, shared) if shared is not None else None
            try:
                yield
            finally:
                self._prefix = None

    def _enter_forward(self, tokens: Tensor, hooks: Sequence[str]) -> None:
        """Inside `shared_prefix`: the blocks before this forward's first hook are the clean ones."""
        if self._prefix is None:
            return
        kept, shared = self._prefix
        if tokens is not kept and not torch.equal(tokens.cpu(), kept.cpu()):
            raise RuntimeError("LanguageModel.shared_prefix: a forward on other tokens than the "
                               "prefix was run for.")
        shared.before(hooks)
