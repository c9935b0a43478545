"""`export(paths, format, out)`: dictionaries, opened in model units, written in another tool's
format (or tcx's own: importing a foreign folder is exporting it to `tcx`). All or nothing: the
files go to a temp folder that is renamed to `out` once complete."""

from __future__ import annotations

from pathlib import Path

from tcx.io import atomic_dir
from tcx.runs.formats import format_named
from tcx.runs.open import open_runs


def export(paths: list[str | Path], format: str, out: str | Path, model: str | None = None,
           replace: bool = False) -> list[Path]:
    """Write every dictionary under `paths` to `out` in `format`; returns the files written."""
    fmt = format_named(format)
    opened = open_runs(paths, model=model)
    out = Path(out)
    with atomic_dir(out, replace) as tmp:
        fmt.write(opened, tmp)
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    return [out / p for p in written]
