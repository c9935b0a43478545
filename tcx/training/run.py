"""`train(cfg)`: compose the pieces the config names and fit them. Called by `tcx-train`."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from tcx import metrics_file
from tcx.config import TrainerConfig, build_node, refuse_unknown_keys
from tcx.data.corpus import Corpus
from tcx.data.windows import TokenWindows, load_windows
from tcx.errors import CheckpointError, ConfigError
from tcx.io import write_json, write_text
from tcx.models.lm import LanguageModel
from tcx.models.spec import ModelSpec
from tcx.training.callbacks import DeadFeatures, MemberLogs, MemberOutputs, Throughput, TrainingState
from tcx.training.checkpoint import AtomicCheckpointIO, resume_checkpoint, tidy_run_dir
from tcx.training.data import ActivationData
from tcx.training.lock import run_dir_lock
from tcx.training.members import Member, plan_members
from tcx.training.module import DictionaryBank
from tcx.training.preemption import CheckpointOnSignal
from tcx.training.resume import check_resume_config
from tcx.training.schedule import Schedule
from tcx.training.summary import print_summary

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    """Lightning adds its own console handler beside Hydra's (every line twice) and advertises."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\..*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")

def make_callbacks(cfg: DictConfig, tcfg: TrainerConfig, members, windows, meta: dict,
                   run_dir: Path) -> tuple[list[L.Callback], MemberOutputs]:
    """The run's own machinery, then the `callbacks` group's entries (a `_partial_` one is handed the
    run's `TrainingState`; one that builds None is off); `outputs.final` holds the results.
    Lightning calls them in list order (checkpoints last): `dead` first, so the others read this
    step's count; the checkpoint on SLURM's warning signal after the group's, whose work it must save."""
    dead, throughput = DeadFeatures(tcfg.dead_window_tokens), Throughput(tcfg.batch_size, tcfg.log_every_n_steps)
    logs = MemberLogs(members, dead, tcfg.batch_size, tcfg.log_every_n_steps, tcfg.metrics_window_steps)
    outputs = MemberOutputs(logs, dead, throughput, tcfg.batch_size, meta)
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=tcfg.checkpoint_every_n_steps,
                                  save_top_k=0, save_last=True, save_on_train_epoch_end=True)
    callbacks: list[L.Callback] = [dead, throughput, logs, outputs, checkpoints]
    state = TrainingState(trainer=tcfg, members=members, windows=windows, seed=cfg.seed, dead=dead,
                          cache_dir=cfg.cache_dir)
    for name, entry in (cfg.get("callbacks") or {}).items():
        if entry is None:
            continue
        try:
            built = instantiate(entry)
            built = built(state=state) if isinstance(built, functools.partial) else built
        except Exception as e:
            raise ConfigError(f"callbacks.{name} could not be built: {e}") from e
        if built is None:
            continue
        if not isinstance(built, L.Callback):
            raise ConfigError(f"callbacks.{name} built a {type(built).__name__}, not a Lightning callback.")
        callbacks.append(built)
    # after every callback that changes the step's outcome (a resample): it saves, then ends the process
    callbacks.append(CheckpointOnSignal(run_dir / "checkpoints" / "last.ckpt"))
    return callbacks, outputs


class RunPlan(NamedTuple):
    """What a run's config asks for, each part validated: built before the first byte is written or
    the first model weight is read (by `tcx-train` and by `tcx-cache`)."""

    spec: ModelSpec
    corpus: Corpus
    trainer: TrainerConfig
    members: list[Member]
    failures: dict[Path, str]
    """Bank members that cannot be trained (folder -> why); the others still are."""


def plan_run(cfg: DictConfig, run_dir: Path) -> RunPlan:
    refuse_unknown_keys(cfg)
    if not cfg.lr > 0:
        raise ConfigError(f"lr={cfg.lr} must be positive.")
    spec = build_node(cfg.model, "model")
    spec.check_layer(cfg.layer)
    return RunPlan(spec, build_node(cfg.data, "data"), OmegaConf.to_object(cfg.trainer), *plan_members(cfg, run_dir))


def open_stream_inputs(plan: RunPlan, cfg: DictConfig) -> tuple[LanguageModel, dict[str, str], TokenWindows]:
    """The model, every hookpoint a member reads (at its own layer; the stream's batches are keyed
    by hookpoint, so the model runs once, to the deepest), and the corpus's windows."""
    tcfg = plan.trainer
    lm = plan.spec.load("cpu", tcfg.model_dtype)
    hooks = sorted({lm.hook_name(site, m.layer)
                    for m in plan.members for site in (m.cfg.input_site, m.cfg.target_site)})
    return lm, {h: h for h in hooks}, load_windows(plan.corpus, lm, tcfg.max_tokens, cfg.cache_dir, tcfg.eval_tokens)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, dict[str, float]]:
    """Train every member of `cfg` in `run_dir`; return each member's final metrics."""
    plan = plan_run(cfg, run_dir)
    tcfg, members = plan.trainer, plan.members
    # (processes Lightning starts itself start later, into the folder rank 0 has prepared)
    if not cfg.resume and (int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 or "TORCHELASTIC_RUN_ID" in os.environ):
        raise ConfigError("resume=false with several processes started together (SLURM tasks, torchrun): "
                          "they could not agree on whether to start afresh. Start it afresh with one "
                          "process, or move the run dir's checkpoints/ aside yourself.")
    with run_dir_lock(run_dir):  # a second process on this folder is refused, naming this one
        if rank_zero_only.rank == 0:  # DDP's other ranks start later, into a folder rank 0 prepared
            tidy_run_dir(run_dir, cfg.resume)
        checkpoint = resume_checkpoint(run_dir)
        if checkpoint is not None:  # only a checkpoint makes a resume; a run that failed earlier is redone
            check_resume_config(run_dir, cfg, checkpoint[2])
            if checkpoint[1] >= tcfg.max_steps and (done := finished(members)) is not None:
                print(f"{run_dir} had already finished (step {checkpoint[1]}); its metrics:")
                print_summary(members, done)
                return done
        if rank_zero_only.rank == 0:  # one writer; DDP's other ranks only read
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            for directory, error in plan.failures.items():
                log.error("bank member %s not trained: %s", directory.name, error)
                write_json(directory / "error.json", {"error": error})
        return fit(cfg, run_dir, plan, checkpoint[0] if checkpoint else None)


def finished(members) -> dict[str, dict[str, float]] | None:
    """Each member's metrics.json if every member left its outputs (a finished run: in a bank, a
    retired member leaves its error.json instead); None while any member's are missing."""
    def done(m) -> bool:
        return metrics_file.exists(m.dir) or (len(members) > 1 and (m.dir / "error.json").is_file())
    if not all(done(m) for m in members):
        return None
    return {m.name: metrics_file.read(m.dir) for m in members if metrics_file.exists(m.dir)}


def build_dictionaries(members: list[Member], dims: dict[str, int], seed: int):
    """Each member's dictionary at its sites' widths. A value only the widths rule out (`k` above the
    features, found once the model has run) fails its member alone in a bank, as a bad value found
    before does: its folder gets error.json, the others train."""
    built, kept = {}, []
    for m in members:
        try:
            built[m.key] = m.cfg.build(dims[m.input_hook], dims[m.target_hook], seed=seed)
            kept.append(m)
        except ConfigError as e:
            if len(members) == 1:
                raise
            error = f"bank member '{m.name}': {e}"
            log.error("bank member %s not trained: %s", m.name, error)
            if rank_zero_only.rank == 0:
                write_json(m.dir / "error.json", {"error": error})
    if not kept:
        raise ConfigError("no member of the bank can be built: see each member's error.json.")
    return built, kept


def fit(cfg: DictConfig, run_dir: Path, plan: RunPlan, checkpoint: Path | None) -> dict[str, dict[str, float]]:
    quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tcfg, members = plan.trainer, plan.members
    lm, hooks, windows = open_stream_inputs(plan, cfg)
    probe = lm.run_to(windows.train[:1], list(hooks.values()))
    dims = {hook: probe[hook].shape[-1] for hook in hooks}

    schedule = Schedule(tcfg.max_steps, tcfg.lr_warmup_steps, tcfg.lr_decay_fraction,
                        tcfg.sparsity_warmup_fraction)
    dictionaries, members = build_dictionaries(members, dims, cfg.seed)
    bank = DictionaryBank(dictionaries, {m.key: (m.input_hook, m.target_hook) for m in members},
                          instantiate(cfg.optimizer), cfg.lr, schedule, compile=tcfg.compile,
                          config=OmegaConf.to_yaml(cfg, resolve=True))
    data = ActivationData(lm, windows, hooks, tcfg, cfg.seed, cfg.cache_dir)

    meta = {"model": plan.spec.name, "seed": cfg.seed}
    callbacks, outputs = make_callbacks(cfg, tcfg, members, windows, meta, run_dir)
    trainer = L.Trainer(
        max_steps=tcfg.max_steps, max_epochs=-1, accelerator=tcfg.accelerator, devices=tcfg.devices,
        num_nodes=tcfg.num_nodes, strategy=tcfg.strategy, precision=tcfg.precision, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], logger=False,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        use_distributed_sampler=False, default_root_dir=run_dir, profiler=tcfg.profiler)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)  # the step is in metrics.json: resumed_from_step
    try:
        trainer.fit(bank, datamodule=data, ckpt_path=checkpoint)
    except RuntimeError as e:
        if checkpoint is None or "size mismatch" not in str(e):
            raise
        raise CheckpointError(f"{checkpoint} holds dictionaries of other shapes than these settings build "
                              f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}): it "
                              "was trained with others. It was left as it was; rerun with the settings it "
                              "was trained with, or resume=false to start afresh (the old run is kept).") from None
    except SystemExit as e:  # Lightning ends a run stopped by SIGTERM (code None) or Ctrl-C (1) this way
        stopped = "SIGTERM" if isinstance(e, SIGTERMException) else "Ctrl-C" if trainer.interrupted else None
        if stopped is None:
            raise
        last = run_dir / "checkpoints" / "last.ckpt"
        raise SystemExit(  # a message makes the exit status 1, and a sweep's other points do not start
            f"error: stopped by {stopped} at step {trainer.global_step} of {tcfg.max_steps}; nothing was lost "
            f"but the steps since the last checkpoint ({last if last.exists() else 'none yet'}). Run the same "
            "command to resume from it.") from None
    if not outputs.final and trainer.global_step >= tcfg.max_steps and finished(members) is None:
        outputs.finish(trainer, bank)  # killed after its last checkpoint, before its outputs: Lightning
        # restores that checkpoint and skips the loop (and on_train_end), so write them here
    final = outputs.final or finished(members) or {}
    if trainer.is_global_zero:
        print_summary(members, final)
    return final
