"""Fill the activation cache of a run without training: what `tcx-cache` does for each job."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from tcx.training.data import make_stream
from tcx.training.run import open_stream_inputs, plan_run


def fill_cache(cfg: DictConfig) -> Path:
    """Run the model over every chunk `cfg`'s training reads, at every site its members read, and
    store what is not stored yet; return the cache's folder."""
    plan = plan_run(cfg, Path("."))
    tcfg = plan.trainer
    tcfg.activation_cache = True
    lm, hooks, windows = open_stream_inputs(plan, cfg)
    if torch.cuda.is_available() and tcfg.accelerator in ("auto", "gpu", "cuda"):
        lm.bridge.to("cuda")  # where training would run it: the cache matches that run bit for bit
    stream = make_stream(lm, windows, hooks, tcfg, cfg.seed, cfg.cache_dir)
    n = stream.chunks_for(tcfg.max_steps)
    todo = [i for i in range(n) if not stream.cache.has(i)]
    for index in tqdm(todo, desc=f"caching {', '.join(hooks.values())}", unit="chunk",
                      disable=not tcfg.progress_bar):
        stream.chunk(index)
    size = sum(f.stat().st_size for site in hooks for i in range(n) if (f := stream.cache.path(site, i)).is_file())
    tokens = n * stream.chunk_tokens
    print(f"activation cache {stream.cache.folder}: {n} chunks of {stream.chunk_tokens:,} tokens "
          f"({n - len(todo)} were there), sites {', '.join(hooks.values())}: {size / 1e9:.2f} GB, "
          f"{size / 1e9 / (tokens / 1e6):.2f} GB per million tokens")
    return stream.cache.folder
