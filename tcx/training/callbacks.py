"""Callbacks, one idea each: dead-feature counting, throughput, and per-member reporting."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import lightning as L
import torch

from tcx import metrics_file
from tcx.evaluation import metrics
from tcx.evaluation.plots import density_histogram
from tcx.io import write_json
from tcx.training.members import Member
from tcx.training.outputs import write_member_outputs


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
        for name, out in outputs["outs"].items():
            fired = metrics.fired(out.z)
            if trainer.world_size > 1:
                fired = trainer.strategy.reduce(fired.float(), reduce_op="max").bool()
            since = self.since.get(name)
            since = torch.zeros_like(fired, dtype=torch.long) if since is None else since.to(fired.device)
            self.since[name] = torch.where(fired, 0, since + n)

    def mask(self, key: str) -> torch.Tensor | None:
        """Features silent for the whole dead window (none before a window has been seen)."""
        if key not in self.since or self.tokens_seen < self.window_tokens:
            return None
        return self.since[key] >= self.window_tokens

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


class AuxK(L.Callback):
    """Tells TopK-family members which latents are dead, for their auxiliary loss."""

    def __init__(self, dead: DeadFeatures):
        self.dead = dead

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for key, member in pl_module.members.items():
            mask = self.dead.mask(key)
            if member.supports_auxk and mask is not None:
                member.dead.copy_(mask)


class Resample(L.Callback):
    """Every N steps, restart the dead features of penalty-sparsified kinds (ReLU, gated, JumpReLU)
    on the rows they reconstruct worst, each kind as its `restart_` says, and clear Adam's moments
    for them. Under DDP the rows are drawn from the global batch (gathered in rank order), so every
    replica restarts alike, and as one process would."""

    def __init__(self, dead: DeadFeatures, every_steps: int, seed: int):
        self.dead, self.every_steps, self.seed = dead, every_steps, seed

    @staticmethod
    def _global(trainer, rows: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return rows
        return trainer.strategy.all_gather(rows).flatten(0, 1)  # [world, batch/world, d] -> the global batch

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_steps or step >= trainer.max_steps:
            return
        optimizer = trainer.optimizers[0]
        for key, d in pl_module.members.items():
            dead = self.dead.mask(key)
            if d.supports_auxk or key not in outputs["outs"] or dead is None or not dead.any():
                continue  # (a retired member has no output)
            dead = dead.to(d.W_enc.device)
            x = self._global(trainer, batch[d.cfg.input_site])
            residual = self._global(trainer, batch[d.cfg.target_site] - outputs["outs"][key].y)
            error = residual.pow(2).sum(-1)
            gen = torch.Generator(device=error.device).manual_seed(self.seed * 1_000_003 + step)
            rows = torch.multinomial(error / error.sum(), int(dead.sum()), replacement=True, generator=gen)
            for param, index in d.restart_(dead, x, residual, rows):
                for moment in optimizer.state.get(param, {}).values():
                    if torch.is_tensor(moment) and moment.shape == param.shape:
                        moment[index] = 0.0
            self.dead.restarted(key, dead)


class Throughput(L.Callback):
    """Training tokens per second of this process's run, shown in the progress bar."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.start: tuple[float, int] | None = None
        self.tokens_per_second = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:  # the clock starts at the first batch: loading is not throughput
            self.start = (time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t0, step0 = self.start
        elapsed = time.perf_counter() - t0
        if elapsed > 0:
            self.tokens_per_second = (trainer.global_step - step0) * self.batch_size / elapsed
        pl_module.log("tok/s", round(self.tokens_per_second), prog_bar=True, logger=False)


class HeldOutEvaluation(L.Callback):
    """Each member's held-out metrics and spliced fidelity, every N training tokens and at the end."""

    def __init__(self, members: list[Member], hooks: dict[str, str], windows, tokens: int,
                 every_tokens: int, batch_size: int):
        self.members, self.hooks, self.windows = members, hooks, windows
        self.n_windows = max(1, -(-tokens // windows.tokens_per_window))
        self.every_steps = max(1, every_tokens // batch_size) if every_tokens else 0

    def measure(self, trainer, pl_module) -> dict[str, tuple[dict[str, float], torch.Tensor]]:
        """All active members in one pass over the held-out tokens: the clean run, the ablations
        and the means are shared; each member's fidelity is that of it spliced in alone."""
        from tcx.evaluation.run import measure
        from tcx.runs import Placed

        active = [m for m in self.members if m.key not in pl_module.retired]
        placed = [Placed(pl_module.members[m.key], self.hooks[m.cfg.input_site], self.hooks[m.cfg.target_site])
                  for m in active]
        for p in placed:
            p.dictionary.eval()  # inference behaviour, e.g. BatchTopK's threshold instead of batch ranking
        try:
            rows, _, freqs = measure(trainer.datamodule.lm, placed, self.windows.heldout[: self.n_windows],
                                     self.windows.valid, progress=False)
        finally:
            for p in placed:
                p.dictionary.train()
        return {m.key: (row, freq) for m, row, freq in zip(active, rows, freqs, strict=True)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_steps and step % self.every_steps == 0 and step < trainer.max_steps \
                and trainer.is_global_zero:
            rows = self.measure(trainer, pl_module)
            for m in self.members:
                if m.key in rows:
                    m.log({f"eval/{k}": v for k, v in rows[m.key][0].items() if isinstance(v, float)}, step)


class MemberReports(L.Callback):
    """Each member's metrics to its own logger (its own W&B run), and its outputs at the end."""

    def __init__(self, members: list[Member], dead: DeadFeatures, throughput: Throughput,
                 batch_size: int, log_every: int, window: int, meta: dict[str, Any],
                 evaluation: HeldOutEvaluation | None = None):
        self.members = {m.key: m for m in members}
        self.dead, self.throughput, self.evaluation = dead, throughput, evaluation
        self.batch_size, self.log_every, self.meta = batch_size, log_every, meta
        self.recent: dict[str, deque] = {m.key: deque(maxlen=window) for m in members}
        self.final: dict[str, dict[str, float]] = {}
        self.resumed_from_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.resumed_from_step = trainer.global_step

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            for member in self.members.values():
                member.open_logger()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        for key, out in outputs["outs"].items():
            member = pl_module.members[key]
            target = batch[member.cfg.target_site]
            row = {"loss": out.loss, "mse": metrics.mse(out.y, target), "sparsity": out.sparsity, "aux": out.aux,
                   "l0": metrics.l0(out.z), "fvu": metrics.fvu(out.y, target)}
            self.recent[key].append({k: float(v) for k, v in row.items()})
            if len(self.members) <= 4:
                pl_module.log(f"l0/{key}" if len(self.members) > 1 else "l0", row["l0"],
                              prog_bar=True, logger=False)
            if trainer.is_global_zero and (step % self.log_every == 0 or step == trainer.max_steps):
                logged = {**self.recent[key][-1], "dead_fraction": self.dead.fraction(key),
                          "tokens": step * self.batch_size,
                          "lr": trainer.optimizers[0].param_groups[0]["lr"],
                          "sparsity_scale": pl_module.schedule.sparsity_scale(step - 1)}
                self.members[key].log(logged, step)

    def summary(self, key: str, step: int) -> dict[str, float]:
        recent = self.recent[key]
        out = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}
        return {**out, "dead_fraction": self.dead.fraction(key), "resampled_features": self.dead.restarts.get(key, 0),
                "tokens": step * self.batch_size,
                "steps": step, "tokens_per_second": self.throughput.tokens_per_second,
                "resumed_from_step": self.resumed_from_step}

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        held_out = self.evaluation.measure(trainer, pl_module) if self.evaluation else {}
        for key, member in self.members.items():
            if key in pl_module.retired:
                write_json(member.dir / "error.json", {"error": pl_module.retired[key]})
                member.close_logger(None, failed=True)
                continue
            summary = self.summary(key, trainer.global_step)
            stream = trainer.datamodule.stream  # this process's share of the model's work
            summary |= {"model_tokens": stream.model_rows, "model_seconds": round(stream.model_seconds, 1)}
            if key in held_out:
                row, frequency = held_out[key]
                summary = metrics_file.merge(summary, row)
                write_json(member.dir / "eval.json", row)
                density_histogram(frequency, member.dir / "feature_density.png",
                                  f"{member.name}: L0 {row['l0']:.1f}")
            self.final[member.name] = summary
            write_member_outputs(member, pl_module.members[key], summary, self.meta)
            member.close_logger(summary)

    def on_exception(self, trainer, pl_module, exception) -> None:
        for member in self.members.values():
            member.close_logger(None, failed=True)

    def state_dict(self) -> dict[str, Any]:
        return {"recent": {k: list(v) for k, v in self.recent.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, rows in state["recent"].items():
            if k in self.recent:
                self.recent[k].extend(rows)
