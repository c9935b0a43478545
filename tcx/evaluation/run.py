"""`evaluate(paths)`: sparsity, reconstruction and spliced fidelity on held-out tokens.

Dictionaries are opened through `tcx.runs` (placed at the hooks their dictionary.json records, on
the model and corpus their run used); evaluation reads only the corpus's held-out windows, which
training never sees.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tcx import metrics_file
from tcx.errors import NotWritableError
from tcx.evaluation import baselines
from tcx.evaluation.baselines import BaselineKey, Baselines
from tcx.evaluation.fidelity import compare, loss, outputs
from tcx.evaluation.plots import density_histogram
from tcx.evaluation.splice import ablation_hooks, splice_hooks, target_means
from tcx.io import write_json
from tcx.runs import Placed, open_runs

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Running sums for one dictionary's sparsity and reconstruction metrics."""

    fired: torch.Tensor
    rows: int = 0
    active: float = 0.0
    sq_err: float = 0.0
    cos: float = 0.0
    target_sum: torch.Tensor | None = None
    target_sq: float = 0.0

    def add(self, z: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        self.rows += len(z)
        self.fired += torch.count_nonzero(z, dim=0).cpu()
        self.active += torch.count_nonzero(z).item()
        self.sq_err += (y - t).pow(2).sum().item()
        self.cos += torch.nn.functional.cosine_similarity(y, t, dim=-1).sum().item()
        s = t.double().sum(0).cpu()
        self.target_sum = s if self.target_sum is None else self.target_sum + s
        self.target_sq += t.double().pow(2).sum().item()

    def result(self, dense_threshold: float) -> dict[str, float]:
        variance = self.target_sq - (self.target_sum.pow(2).sum() / self.rows).item()
        freq = self.fired.double() / self.rows
        return {"l0": self.active / self.rows, "fvu": self.sq_err / variance,
                "mse": self.sq_err / self.rows, "cos": self.cos / self.rows,
                "unfired_fraction": (freq == 0).double().mean().item(),
                "dense_fraction": (freq > dense_threshold).double().mean().item(),
                "eval_tokens": self.rows}


def measure(lm, placed: list[Placed], heldout: torch.Tensor, valid: slice, batch_windows: int = 16,
            dense_threshold: float = 0.1, progress: bool = True, joint: bool = True,
            cache_dir: str | Path | None = None
            ) -> tuple[list[dict[str, float]], dict[str, float] | None, list[torch.Tensor]]:
    """Per-dictionary rows, the joint fidelity of all spliced together, and firing frequencies.
    Each dictionary's row is its fidelity spliced in alone, against ablating its own target alone
    (so dictionaries at several layers each get what their solo evaluation gives); the joint one
    is against ablating every target. `joint=False` skips the joint run of several dictionaries
    (returned as None): a bank in training has no use for it. The runs without a dictionary come
    from `<cache_dir>/baselines/` where an earlier evaluation left them (see `baselines.py`)."""
    targets = list(dict.fromkeys(p.target_hook for p in placed))
    key = BaselineKey.of(lm, heldout, valid, batch_windows, targets)
    kept = baselines.load(cache_dir, key)
    base = kept or Baselines(target_means(lm, heldout, targets, valid, batch_windows),
                             clean=None if lm.spec.kind == "causal" else [])
    ablations = {} if kept else ablation_variants(targets, base.means, valid)
    stats = [Stats(torch.zeros(p.dictionary.d_sae, dtype=torch.long)) for p in placed]
    # A dictionary's sparsity and reconstruction are read in the run where it is spliced in alone,
    # where every activation up to its target is the clean model's.
    variants = {("spliced" if len(placed) == 1 else f"alone_{i}"):
                splice_hooks([p], valid, record=s.add)
                for i, (p, s) in enumerate(zip(placed, stats, strict=True))}
    if joint and len(placed) > 1:
        variants["spliced"] = splice_hooks(placed, valid)
    losses: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for b, start in enumerate(tqdm(range(0, len(heldout), batch_windows), desc="evaluating",
                                       unit="batch", disable=not progress, leave=False)):
            tokens = heldout[start: start + batch_windows]
            with lm.shared_prefix(tokens):  # the blocks before each run's edits run once a batch
                clean = kept.clean[b].to(lm.device) if kept and kept.clean else outputs(lm, tokens, [])
                if not kept:
                    if base.clean is not None:
                        base.clean.append(clean.cpu())
                    base.add("clean", loss(lm, tokens, clean, clean))
                    for name, hooks in ablations.items():
                        for k, v in compare(lm, tokens, clean, outputs(lm, tokens, hooks), name).items():
                            base.add(k, v)
                for name, hooks in variants.items():
                    for k, v in compare(lm, tokens, clean, outputs(lm, tokens, hooks), name).items():
                        losses.setdefault(k, []).append(v.cpu())
    if not kept:
        baselines.save(cache_dir, key, base)
    mean_loss = {k: torch.cat(v).mean().item() for k, v in {**base.losses, **losses}.items()}
    together = fidelity(mean_loss, "spliced", lm.spec.kind) if "spliced" in mean_loss else None
    rows = [{**s.result(dense_threshold),
             **(together if len(placed) == 1 else fidelity(mean_loss, f"alone_{i}", lm.spec.kind,
                                                           f"@{p.target_hook}" if len(targets) > 1 else ""))}
            for i, (p, s) in enumerate(zip(placed, stats, strict=True))]
    return rows, together, [s.fired.double() / s.rows for s in stats]


def ablation_variants(targets: list[str], means: dict[str, torch.Tensor], valid: slice) -> dict[str, list]:
    """Zero and mean ablation of every target together and, where there are several, of each alone."""
    variants = {"zero_ablated": ablation_hooks(dict.fromkeys(targets), valid),
                "mean_ablated": ablation_hooks({h: means[h] for h in targets}, valid)}
    if len(targets) > 1:
        for hook in targets:
            variants[f"zero_ablated@{hook}"] = ablation_hooks({hook: None}, valid)
            variants[f"mean_ablated@{hook}"] = ablation_hooks({hook: means[hook]}, valid)
    return variants


def evaluate(paths: list[str | Path], max_tokens: int = 32_768, batch_windows: int = 16,
             dense_threshold: float = 0.1, out_dir: str | Path | None = None, plots: bool = True,
             model: str | dict | None = None) -> dict:
    """Evaluate saved dictionaries (run dirs, sweep dirs, exported or foreign folders) spliced into
    their model. A tcx run gets eval.json (and its metrics.json updated) beside its dictionary;
    a dictionary in another format gets eval_<name>.json beside its folder. With `out_dir` every
    file goes there, eval_<name>.json, and the runs are left as they were."""
    opened = open_runs(paths, model=model)
    for d in opened.dictionaries:  # what it cannot write is found before the work, not after
        if d.writes_into_run(out_dir):
            metrics_file.read(d.source)
        where = d.output_file("eval", out_dir).parent
        if where.is_dir() and not os.access(where, os.W_OK):
            raise NotWritableError(f"cannot write {where}: no write permission (or a read-only file system): "
                                   "nothing was evaluated. Give out_dir= a folder you can write, or fix it.")
    placed = opened.placed()
    heldout, valid = opened.heldout(max_tokens)
    opened.check_widths()
    shared = len({p.target_hook for p in placed}) < len(placed)
    if shared:  # spliced together, the last would replace the others' output: no joint numbers
        log.warning("several dictionaries write the same hook: each is evaluated alone, and no joint "
                    "numbers are computed (spliced together, the last would replace the others)")
    rows, joint, frequencies = measure(opened.lm, placed, heldout, valid, batch_windows, dense_threshold,
                                       joint=not shared, cache_dir=opened.cache_dir)
    for d, row in zip(opened.dictionaries, rows, strict=True):
        warn_if_unstable(d.name, row)

    results: dict = {"joint": joint, "dictionaries": {}, "written": []}
    for d, row, freq in zip(opened.dictionaries, rows, frequencies, strict=True):
        if d.writes_into_run(out_dir):  # its metrics.json updated too
            metrics_file.update(d.source, row)
        results["dictionaries"][d.ident] = row
        write_json(path := d.output_file("eval", out_dir), row)
        results["written"].append(str(path))
        if plots:
            density_histogram(freq, d.output_file("feature_density", out_dir, ".png"), f"{d.name}: L0 {row['l0']:.1f}")
    if len(placed) > 1 and joint is not None:
        write_json(Path(out_dir or opened.dictionaries[0].source.parent) / "eval_joint.json",
                   {"dictionaries": [str(d.source) for d in opened.dictionaries], **joint})
    return results


def warn_if_unstable(name: str, row: dict[str, float]) -> None:
    """A recovered fraction is (L_ablated - L_spliced) / (L_ablated - L_clean): where ablating the
    layer hardly changes the loss, its denominator is noise, and the fraction lands anywhere."""
    for kind in ("zero", "mean"):
        value, gap = row.get(f"recovered_{kind}"), row[f"loss_{kind}_ablated"] - row["loss_clean"]
        if value is not None and math.isfinite(value) and not -0.1 <= value <= 1.1:
            log.warning("%s: recovered_%s = %.3f lies outside [0, 1]: %s-ablating this layer changes the "
                        "loss by only %.4g, against %.4g for the dictionary, so the fraction says little "
                        "here; read loss_spliced against loss_clean instead", name, kind, value, kind, gap,
                        row["loss_spliced"] - row["loss_clean"])


def fidelity(loss: dict[str, float], spliced: str, kind: str, ablated: str = "") -> dict[str, float]:
    """The `spliced` variant's loss against clean and the ablations (`zero_ablated<ablated>`, ...)."""
    clean, spl = loss["clean"], loss[spliced]
    zero, mean = loss[f"zero_ablated{ablated}"], loss[f"mean_ablated{ablated}"]
    out = {"fidelity_metric": "next_token_ce" if kind == "causal" else "1-cos(sentence_embedding)",
           "loss_clean": clean, "loss_spliced": spl, "loss_zero_ablated": zero,
           "loss_mean_ablated": mean,
           "recovered_zero": (zero - spl) / (zero - clean) if zero != clean else float("nan"),
           "recovered_mean": (mean - spl) / (mean - clean) if mean != clean else float("nan")}
    if f"kl_{spliced}" in loss:
        out["kl"] = loss[f"kl_{spliced}"]
    return out
