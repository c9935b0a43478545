"""`DictionaryBank`: trains several dictionaries side by side on one activation stream.

Members never interact: the summed loss gives each member's parameters exactly the gradient of its
own loss, and Adam is element-wise, so a member of a bank ends with the same weights as the same
dictionary trained alone with the same seed. Sweeps pack points into one job this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import lightning as L
import torch
from torch import Tensor, nn

from tcx.dictionaries.base import Dictionary, StepOutput
from tcx.errors import NonFiniteLossError
from tcx.evaluation import metrics
from tcx.training.compiled import compile_step
from tcx.training.schedule import Schedule

ROW = ("loss", "mse", "sparsity", "aux", "l0", "fvu")
"""What each member reports each step (its training window; its logger every log_every steps)."""


def step_row(out: StepOutput, target: Tensor) -> Tensor:
    """`ROW` of one member's step, as one float32 tensor."""
    aux = out.loss.new_zeros(()) if out.aux is None else out.aux
    values = (out.loss, metrics.mse(out.y, target), out.sparsity, aux, metrics.l0(out.z), metrics.fvu(out.y, target))
    return torch.stack([v.float() for v in values])


class DictionaryBank(L.LightningModule):
    def __init__(self, members: Mapping[str, Dictionary], reads: Mapping[str, tuple[str, str]],
                 optimizer: Callable, lr: float, schedule: Schedule, compile: str | None = None,
                 config: str | None = None):
        super().__init__()
        self.config = config
        """The run's config (YAML), kept in every checkpoint: a resume checks against what was trained
        even where the run dir's config.yaml is missing or was rewritten."""
        self.members = nn.ModuleDict(dict(members))
        self.reads = dict(reads)
        """Member key -> (input hookpoint, target hookpoint): the batch entries it trains on."""
        self.optimizer_factory, self.lr, self.schedule = optimizer, lr, schedule
        self.retired: dict[str, str] = {}
        """Members of a bank whose loss went non-finite: they stop training, the others go on."""
        self.step_outputs: dict[str, StepOutput] = {}
        """This step's output of every active member, detached: what the callbacks read."""
        self.step_rows: dict[str, dict[str, float]] = {}
        """This step's `ROW` of every active member, read back to the host in one go with the check
        that each loss is finite: one wait for the device a step, whatever the bank's size."""
        self.compile_mode = compile
        """`trainer.compile`: each member's step compiled whole in this mode (see `compile_step`)."""
        self.register_buffer("scale", torch.zeros(()), persistent=False)
        """A compiled step's sparsity scale, on the device: as a float it would be a host input."""

    def on_fit_start(self) -> None:
        if self.compile_mode is not None:
            for member in self.members.values():
                compile_step(member, self.compile_mode)

    def on_train_start(self) -> None:
        if self.global_step == 0:  # a resumed run keeps its trained b_dec
            batch = self.trainer.datamodule.stream.chunk(0)
            for key, member in self.members.items():
                x, target = (batch[hook].to(self.device) for hook in self.reads[key])
                member.init_from_data(x, target)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        scale = self.schedule.sparsity_scale(self.global_step)
        if self.compile_mode is not None:
            scale = self.scale.fill_(scale)
        outs: dict[str, StepOutput] = {
            name: m(*(batch[hook] for hook in self.reads[name]), sparsity_scale=scale)
            for name, m in self.members.items() if name not in self.retired
        }
        self.step_outputs = {n: StepOutput(*(t if t is None else t.detach() for t in o)) for n, o in outs.items()}
        rows = torch.stack([step_row(o, batch[self.reads[n][1]]) for n, o in self.step_outputs.items()])
        self.step_rows = {n: dict(zip(ROW, r, strict=True)) for n, r in zip(outs, rows.tolist(), strict=True)}
        bad = [n for n, row in self.step_rows.items() if not math.isfinite(row["loss"])]
        if bad:
            losses = ", ".join(str(self.step_rows[n]["loss"]) for n in bad)
            message = (f"step {self.global_step}: the loss of {', '.join(bad)} is {losses}. "
                       "Lower lr, raise trainer.lr_warmup_steps, or check the activations for inf.")
            if len(bad) == len(outs):
                raise NonFiniteLossError(f"{message} Training stopped; the last good checkpoint is kept.")
            self.retired.update({n: message for n in bad})
            for n in bad:
                del outs[n], self.step_outputs[n], self.step_rows[n]
        return torch.stack([o.loss for o in outs.values()]).sum()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["retired"] = dict(self.retired)
        checkpoint["tcx_config"] = self.config

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.retired = dict(checkpoint.get("retired", {}))

    def on_before_optimizer_step(self, optimizer) -> None:
        for member in self.members.values():
            member.before_optimizer_step()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """The step, then each member's fix-up (TopK decoders back to unit rows) inside it: Lightning
        runs callbacks' `on_train_batch_end` (ModelCheckpoint's too) before the module's, so a
        fix-up there would miss the checkpoint."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for member in self.members.values():
            member.after_optimizer_step()

    def param_groups(self) -> list[dict]:
        """One group at the lr (every parameter, in order, when no kind scales any: the layout
        checkpoints hold), then one per lr multiple a kind asks for (`Dictionary.lr_scales`)."""
        scaled: dict[int, float] = {id(m.get_parameter(name)): scale for m in self.members.values()
                                    for name, scale in m.lr_scales().items() if scale != 1.0}
        groups = [{"params": [p for p in self.parameters() if id(p) not in scaled]}]
        for scale in sorted(set(scaled.values())):
            groups.append({"params": [p for p in self.parameters() if scaled.get(id(p)) == scale],
                           "lr": self.lr * scale})
        return groups

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.param_groups(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
