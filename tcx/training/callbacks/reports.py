"""What each member reports: its training curves while it trains (`MemberLogs`), and what it leaves
in its folder at the end (`MemberOutputs`)."""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning as L

from tcx import metrics_file
from tcx.evaluation.plots import density_histogram
from tcx.io import write_json
from tcx.training.callbacks.dead import DeadFeatures
from tcx.training.callbacks.evaluation import HeldOutEvaluation
from tcx.training.callbacks.throughput import Throughput
from tcx.training.members import Member
from tcx.training.outputs import write_member_outputs


class MemberLogs(L.Callback):
    """Each member's training metrics, every step into a window of the last `window` steps (whose
    mean is the run's `train_*` summary, checkpointed), every `log_every` steps to the member's own
    logger (its own W&B run), which this callback opens and, on failure, closes."""

    def __init__(self, members: list[Member], dead: DeadFeatures, batch_size: int, log_every: int, window: int):
        self.members = {m.key: m for m in members}
        self.dead, self.batch_size, self.log_every = dead, batch_size, log_every
        self.recent: dict[str, deque] = {m.key: deque(maxlen=window) for m in members}

    @property
    def state_key(self) -> str:
        return "MemberReports"  # the name checkpoints written before the split keep the window under

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            for member in self.members.values():
                member.open_logger()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        rows = pl_module.step_rows
        for key, row in rows.items():
            self.recent[key].append(row)
        if not rows or not (step % self.log_every == 0 or step == trainer.max_steps):
            return
        self.show(pl_module, rows)
        if trainer.is_global_zero:
            for key, row in rows.items():
                self.members[key].log({**row, "dead_fraction": self.dead.fraction(key),
                                       "tokens": step * self.batch_size,
                                       "lr": trainer.optimizers[0].param_groups[0]["lr"],
                                       "sparsity_scale": pl_module.schedule.sparsity_scale(step - 1)}, step)

    def show(self, pl_module, rows: dict[str, dict[str, float]]) -> None:
        """The progress bar's loss (all members') and L0s, every log_every steps: a Lightning log call
        costs about as much as a small dictionary's step."""
        pl_module.log("loss", sum(row["loss"] for row in rows.values()), prog_bar=True, logger=False)
        if len(self.members) <= 4:  # (as before: a bank of more shows its loss only)
            for key, row in rows.items():
                pl_module.log(f"l0/{key}" if len(self.members) > 1 else "l0", row["l0"],
                              prog_bar=True, logger=False)

    def window_mean(self, key: str) -> dict[str, float]:
        recent = self.recent[key]
        return {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]} if recent else {}

    def on_exception(self, trainer, pl_module, exception) -> None:
        for member in self.members.values():
            member.close_logger(None, failed=True)

    def state_dict(self) -> dict[str, Any]:
        return {"recent": {k: list(v) for k, v in self.recent.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, rows in state["recent"].items():
            if k in self.recent:
                self.recent[k].extend(rows)


class MemberOutputs(L.Callback):
    """At the end: every member's summary (the training window, dead features, throughput, the
    held-out evaluation, when the run has one among its callbacks) into `final`, and its folder's
    outputs (weights, metrics.json, eval.json, density plot, config) written; a retired member gets
    its error.json. Then its logger is closed."""

    def __init__(self, logs: MemberLogs, dead: DeadFeatures, throughput: Throughput, batch_size: int,
                 meta: dict[str, Any]):
        self.logs, self.dead, self.throughput = logs, dead, throughput
        self.batch_size, self.meta = batch_size, meta
        self.final: dict[str, dict[str, float]] = {}
        self.resumed_from_step: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.resumed_from_step = trainer.global_step

    def summary(self, key: str, step: int) -> dict[str, float]:
        return {**self.logs.window_mean(key), "dead_fraction": self.dead.fraction(key),
                "resampled_features": self.dead.restarts.get(key, 0), "tokens": step * self.batch_size,
                "steps": step, "tokens_per_second": self.throughput.tokens_per_second,
                "resumed_from_step": self.resumed_from_step}

    def on_train_end(self, trainer, pl_module) -> None:
        self.finish(trainer, pl_module)

    def finish(self, trainer, pl_module) -> None:
        """The outputs; also called by `fit` for a run resumed at its last step, where Lightning skips
        the training loop and so `on_train_end`."""
        if self.resumed_from_step is None:
            self.resumed_from_step = trainer.global_step
        if not trainer.is_global_zero:
            return
        evaluation = next((c for c in trainer.callbacks if isinstance(c, HeldOutEvaluation)), None)
        held_out = evaluation.measure(trainer, pl_module) if evaluation else {}
        for key, member in self.logs.members.items():
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
