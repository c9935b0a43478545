"""Docstrings of the installed Python: the default corpus that needs no download."""

from __future__ import annotations

import ast
import os
import signal
import site
import sysconfig
import warnings
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path


def source_files(site_packages: bool) -> list[Path]:
    """Standard library first, then installed packages; sorted, so the order is reproducible."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    roots = [stdlib]
    if site_packages:
        roots += sorted({Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]
                         if Path(p).is_dir()})
    files: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            skip = root == stdlib and ("site-packages" in path.parts or "dist-packages" in path.parts)
            if not skip and path not in seen and path.stat().st_size < 2_000_000:
                seen.add(path)
                files.append(path)
    return files


def docstrings_of(path: Path) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
        return []
    nodes = (n for n in ast.walk(tree)
             if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef))
    return [d for n in nodes if (d := ast.get_docstring(n))]


def _worker_signals() -> None:
    """Workers leave SLURM's warning signal to the main process (which checkpoints and requeues),
    and die on SIGTERM as Pool.terminate() expects: under submitit they inherit a handler that
    ignores SIGTERM, and the pool would then wait for them forever."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def iter_docstrings(site_packages: bool = True, min_chars: int = 40) -> Iterator[str]:
    files = source_files(site_packages)
    # ast.parse is the cost (about 30 s for the stdlib alone): parse on every core, keep the order.
    with Pool(processes=min(4, os.cpu_count() or 1), initializer=_worker_signals) as pool:
        for docs in pool.imap(docstrings_of, files, chunksize=16):
            yield from (d for d in docs if len(d) >= min_chars)
