"""`evaluate(paths)`: sparsity, reconstruction and spliced fidelity on held-out tokens.

The model, layer and corpus come from the `config.yaml` saved beside each dictionary; evaluation
reads only the corpus's held-out windows, which training never sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from tcx.config import build_node
from tcx.data.windows import load_windows
from tcx.dictionaries.io import load_dictionary
from tcx.errors import CheckpointError, ConfigError
from tcx.evaluation.fidelity import model_losses
from tcx.evaluation.plots import density_histogram
from tcx.evaluation.splice import Placed, ablation_hooks, splice_hooks, target_means
from tcx.io import write_json

TRAINING_KEYS = ("l0", "fvu", "mse", "dead_fraction")


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
        self.fired += (z != 0).sum(0).cpu()
        self.active += (z != 0).sum().item()
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
                "dead_fraction": (freq == 0).double().mean().item(),
                "dense_fraction": (freq > dense_threshold).double().mean().item(),
                "eval_tokens": self.rows}


def resolve(path: str | Path) -> Path:
    path = Path(path)
    directory = path.parent if path.suffix == ".safetensors" else path
    if not (directory / "config.yaml").is_file():
        raise CheckpointError(f"{directory} has no config.yaml beside its dictionary: evaluation needs "
                              "the model and corpus it was trained on (a tcx-train run dir has both).")
    return directory


def measure(lm, placed: list[Placed], heldout: torch.Tensor, valid: slice, batch_windows: int = 16,
            dense_threshold: float = 0.1, progress: bool = True
            ) -> tuple[list[dict[str, float]], dict[str, float], list[torch.Tensor]]:
    """Per-dictionary rows, the joint fidelity of all spliced together, and firing frequencies."""
    means = target_means(lm, heldout, [p.target_hook for p in placed], valid, batch_windows)
    variants = {"spliced": splice_hooks(placed, valid),
                "zero_ablated": ablation_hooks({p.target_hook: None for p in placed}, valid),
                "mean_ablated": ablation_hooks({p.target_hook: means[p.target_hook] for p in placed}, valid)}
    if len(placed) > 1:
        variants.update({f"alone_{i}": splice_hooks([p], valid) for i, p in enumerate(placed)})
    stats = [Stats(torch.zeros(p.dictionary.d_sae, dtype=torch.long)) for p in placed]
    hooks = list({h: None for p in placed for h in (p.input_hook, p.target_hook)})
    losses: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, len(heldout), batch_windows), desc="evaluating", unit="batch",
                          disable=not progress, leave=False):
            tokens = heldout[start: start + batch_windows]
            acts = lm.run_to(tokens, hooks)
            for p, s in zip(placed, stats, strict=True):
                dtype = p.dictionary.W_enc.dtype
                x, t = (acts[h][:, valid].reshape(-1, acts[h].shape[-1]).to(dtype)
                        for h in (p.input_hook, p.target_hook))
                s.add(*p.dictionary.encode_decode(x), t)
            for k, v in model_losses(lm, tokens, variants).items():
                losses.setdefault(k, []).append(v.cpu())
    mean_loss = {k: torch.cat(v).mean().item() for k, v in losses.items()}
    joint = fidelity(mean_loss, "spliced", lm.spec.kind)
    rows = [{**s.result(dense_threshold),
             **(joint if len(placed) == 1 else fidelity(mean_loss, f"alone_{i}", lm.spec.kind))}
            for i, s in enumerate(stats)]
    return rows, joint, [s.fired.double() / s.rows for s in stats]


def evaluate(paths: list[str | Path], max_tokens: int = 32_768, batch_windows: int = 16,
             dense_threshold: float = 0.1, out_dir: str | Path | None = None, plots: bool = True
             ) -> dict:
    """Evaluate saved dictionaries (run dirs or .safetensors files) and write eval.json beside each."""
    if not paths:
        raise ConfigError("nothing to evaluate: give run=<run dir> or dictionaries=[dir, ...].")
    dirs = [resolve(p) for p in paths]
    loaded = [load_dictionary(d) for d in dirs]
    configs = [OmegaConf.load(d / "config.yaml") for d in dirs]
    models = {c.model.name for c in configs}
    if len(models) > 1:
        listing = ", ".join(f"{d} ({c.model.name})" for d, c in zip(dirs, configs, strict=True))
        raise ConfigError(f"these dictionaries were trained on different models and cannot be spliced "
                          f"into one: {listing}.")
    cfg = configs[0]
    spec, corpus = build_node(cfg.model, "model"), build_node(cfg.data, "data")
    lm = spec.load("cpu", cfg.trainer.model_dtype)
    placed = []
    for d, (dictionary, meta) in zip(dirs, loaded, strict=True):
        if meta.get("model") not in (None, spec.name):
            raise ConfigError(f"{d}: trained on model {meta['model']} but its config names {spec.name}.")
        placed.append(Placed(dictionary.eval(), lm.hook_name(dictionary.cfg.input_site, meta["layer"]),
                             lm.hook_name(dictionary.cfg.target_site, meta["layer"])))
    windows = load_windows(corpus, lm, int(max(m["training_tokens"] for _, m in loaded)), cfg.cache_dir)
    heldout = windows.heldout[: max(1, -(-max_tokens // windows.tokens_per_window))]
    check_widths(lm, heldout[:1], placed, dirs)
    rows, joint, frequencies = measure(lm, placed, heldout, windows.valid, batch_windows, dense_threshold)

    results = {"joint": joint, "dictionaries": {}}
    for d, row, freq in zip(dirs, rows, frequencies, strict=True):
        results["dictionaries"][str(d)] = row
        write_json(d / "eval.json", row)
        write_json(d / "metrics.json", merge_eval(read_json(d / "metrics.json"), row))
        if plots:
            density_histogram(freq, d / "feature_density.png", f"{d.name}: L0 {row['l0']:.1f}")
    if len(placed) > 1:
        write_json(Path(out_dir or dirs[0].parent) / "eval_joint.json",
                   {"dictionaries": [str(d) for d in dirs], **joint})
    return results


def fidelity(loss: dict[str, float], spliced: str, kind: str) -> dict[str, float]:
    clean, spl, zero, mean = loss["clean"], loss[spliced], loss["zero_ablated"], loss["mean_ablated"]
    out = {"fidelity_metric": "next_token_ce" if kind == "causal" else "1-cos(sentence_embedding)",
           "loss_clean": clean, "loss_spliced": spl, "loss_zero_ablated": zero,
           "loss_mean_ablated": mean,
           "recovered_zero": (zero - spl) / (zero - clean) if zero != clean else float("nan"),
           "recovered_mean": (mean - spl) / (mean - clean) if mean != clean else float("nan")}
    if f"kl_{spliced}" in loss:
        out["kl"] = loss[f"kl_{spliced}"]
    return out


def check_widths(lm, tokens, placed: list[Placed], dirs: list[Path]) -> None:
    acts = lm.run_to(tokens, list({h for p in placed for h in (p.input_hook, p.target_hook)}))
    for d, p in zip(dirs, placed, strict=True):
        for hook, want in ((p.input_hook, p.dictionary.d_in), (p.target_hook, p.dictionary.d_out)):
            if acts[hook].shape[-1] != want:
                raise ConfigError(f"{d}: the dictionary expects width {want} at {hook}, but the model "
                                  f"has {acts[hook].shape[-1]} there: it was trained on another model or "
                                  "layer.")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def merge_eval(metrics: dict, row: dict) -> dict:
    """Held-out numbers take the plain keys; training-window values move to `train_<key>`."""
    merged = dict(metrics)
    for key, value in row.items():
        if key in merged and f"train_{key}" not in merged and key in TRAINING_KEYS:
            merged[f"train_{key}"] = merged[key]
        merged[key] = value
    return merged
