"""Which features are dead: tokens since each last fired, per member; restarts counted."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from tcx.evaluation import metrics


class DeadFeatures(L.Callback):
    """Counts, per member and feature, the tokens since it last fired, and per member the features
    restarted (checkpointed)."""

    def __init__(self, window_tokens: int):
        self.window_tokens = window_tokens
        self.since: dict[str, torch.Tensor] = {}
        self.tokens_seen = 0
        self.restarts: dict[str, int] = {}

    def restarted(self, key: str, mask: torch.Tensor) -> None:
        """`mask`'s features were restarted: they count as just fired."""
        self.since[key][mask.to(self.since[key].device)] = 0
        self.restarts[key] = self.restarts.get(key, 0) + int(mask.sum())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = next(iter(batch.values())).shape[0] * trainer.world_size
        self.tokens_seen += n
        for name, out in pl_module.step_outputs.items():
            fired = metrics.fired(out.z)
            if trainer.world_size > 1:
                fired = trainer.strategy.reduce(fired.float(), reduce_op="max").bool()
            since = self.since.get(name)
            since = torch.zeros_like(fired, dtype=torch.long) if since is None else since.to(fired.device)
            self.since[name] = torch.where(fired, 0, since + n)

    def mask(self, key: str, window_tokens: int | None = None) -> torch.Tensor | None:
        """Features silent for the whole dead window, or `window_tokens` (none before a window has
        been seen)."""
        window = window_tokens or self.window_tokens
        if key not in self.since or self.tokens_seen < window:
            return None
        return self.since[key] >= window

    def fraction(self, name: str) -> float:
        if name not in self.since:
            return 0.0
        return metrics.dead_fraction(self.since[name], min(self.window_tokens, self.tokens_seen))

    def state_dict(self) -> dict[str, Any]:
        return {"since": {k: v.cpu() for k, v in self.since.items()}, "tokens_seen": self.tokens_seen,
                "restarts": dict(self.restarts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.since, self.tokens_seen = dict(state["since"]), state["tokens_seen"]
        self.restarts = dict(state.get("restarts", {}))  # checkpoints before restarts were counted
