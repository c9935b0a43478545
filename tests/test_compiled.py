"""`trainer.compile` and host reads: every kind's dense step is one graph, so it reads nothing back to
the host (what CUDA graphs need); AuxK and BatchTopK's threshold without a read-back equal the forms
with one; a bank's step reads the device once, whatever its size; a compiled bank trains what the
eager dense step trains, compiling each member once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from tcx.config import build_node
from tcx.errors import ConfigError
from tcx.training.callbacks import DeadFeatures
from tcx.training.callbacks.reports import MemberLogs
from tcx.training.module import DictionaryBank
from tcx.training.run import train
from tcx.training.schedule import Schedule

KINDS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "dictionary").glob("*.yaml"))
GEN = torch.Generator().manual_seed(0)


def build(make_cfg, kind: str, *overrides: str):
    return build_node(make_cfg(f"dictionary={kind}", *overrides).dictionary, "dictionary").build(16, 16)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kinds_dense_step_is_one_graph(make_cfg, kind):
    """A host read (`.item()`, `int(t)`, a data-dependent shape) would break the graph."""
    d = build(make_cfg, kind).train()
    if hasattr(d, "dead"):
        d.dead[::3] = True  # (AuxK's path with dead latents)
    x = torch.randn(64, 16, generator=GEN)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(d)(x, x.flip(1), sparsity_scale=torch.tensor(0.5))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("dead", [0, 5, 40, 64])  # none, fewer than aux_k, more, all
def test_auxk_without_the_count_is_auxk_with_it(make_cfg, monkeypatch, dead):
    monkeypatch.setenv("TCX_SPARSE", "0")
    d = build(make_cfg, "topk", "dictionary.k=4", "dictionary.aux_k=16", "dictionary.d_sae=64")
    d.dead[torch.randperm(64, generator=GEN)[:dead]] = True
    x, residual = torch.randn(32, 16, generator=GEN), torch.randn(32, 16, generator=GEN)
    pre = d.pre_activation(x).detach().requires_grad_()
    synced, unsynced = d.aux_loss(x, pre, residual, d.dead), d.aux_loss_unsynced(pre, residual, d.dead)
    assert torch.equal(synced, unsynced)
    if dead:
        grads = [torch.autograd.grad(loss, (pre, d.W_dec)) for loss in (synced, unsynced)]
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    else:
        assert synced == 0


def test_batchtopk_threshold_moves_as_before(make_cfg):
    d = build(make_cfg, "batchtopk", "dictionary.threshold_momentum=0.9")
    d.track_threshold(torch.tensor([0.0, -1.0]))  # nothing kept: unchanged
    assert d.threshold == -1
    d.track_threshold(torch.tensor([0.5, 0.0, 2.0, 0.25]))  # the first batch sets it
    assert d.threshold == 0.25
    d.track_threshold(torch.tensor([3.0, 1.0]))
    assert torch.allclose(d.threshold, torch.tensor(0.9 * 0.25 + 0.1 * 1.0))


class HostReads(TorchFunctionMode):
    """Counts the calls that wait for a GPU: a tensor's value read back to the host."""

    READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_a_banks_dense_step_reads_the_device_once(make_cfg, monkeypatch):
    """The finiteness check and every member's logged row come back together (they were a read for
    the check and one per member for the rows)."""
    monkeypatch.setenv("TCX_SPARSE", "0")
    members = {kind: build(make_cfg, kind) for kind in ("transcoder", "sae", "gated", "jumprelu")}
    bank = DictionaryBank(members, {k: ("x", "x" if k == "sae" else "y") for k in members},
                          torch.optim.Adam, 1e-3, Schedule(100, 1, 0.2, 0.05))
    batch = {"x": torch.randn(64, 16, generator=GEN), "y": torch.randn(64, 16, generator=GEN)}
    logs = MemberLogs([SimpleNamespace(key=k) for k in members], DeadFeatures(1000), 64, 10, 4)
    with HostReads() as counted:
        loss = bank.training_step(batch, 0)
        logs.on_train_batch_end(SimpleNamespace(global_step=1, max_steps=100), bank, loss, batch, 0)
    assert counted.reads == ["tolist"]
    assert all(len(logs.recent[k]) == 1 for k in members)
    assert set(bank.step_rows) == set(members) and loss.isfinite()
    for kind, row in bank.step_rows.items():
        target = batch[bank.reads[kind][1]]
        assert row["mse"] == pytest.approx(float((bank.step_outputs[kind].y - target).pow(2).sum(-1).mean()), rel=1e-6)


def test_a_compiled_bank_trains_what_the_eager_dense_step_trains(make_cfg, tmp_path, monkeypatch):
    """Compiled (inductor's own kernels) and eager sum in other orders, so the weights agree to float
    tolerance, not bit for bit; each member compiles once, though the sparsity scale changes every
    step of its warm-up."""
    bank = "bank=[{name: relu}, {dictionary: topk, k: 8, name: topk}, {dictionary: batchtopk, k: 8, name: batchtopk}]"
    short = ("trainer.max_tokens=16384", "trainer.eval_tokens=0", "trainer.sparsity_warmup_fraction=0.5", bank)
    monkeypatch.setenv("TCX_SPARSE", "0")
    train(make_cfg(*short), tmp_path / "eager")
    torch._dynamo.reset()  # (no graph an earlier test compiled may serve these members)
    before = counters["stats"]["unique_graphs"]
    train(make_cfg(*short, "trainer.compile=default"), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] - before == 3
    for member in ("relu", "topk", "batchtopk"):
        eager, compiled = (load_file(str(tmp_path / run / member / "dictionary.safetensors"))
                           for run in ("eager", "compiled"))
        for name in eager:
            assert torch.allclose(eager[name], compiled[name], rtol=1e-4, atol=1e-5), (member, name)


def test_an_unknown_compile_mode_is_refused_before_anything_runs(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.compile must be null or one of default, reduce-overhead"):
        train(make_cfg("trainer.compile=fast"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
