"""`export(paths, format, out)`: dictionaries, opened in model units, written in another tool's
format (or tcx's own: importing a foreign folder is exporting it to `tcx`). All or nothing: the
files go to a temp folder that is renamed to `out` once complete."""

from __future__ import annotations

from pathlib import Path

from tcx.errors import ConfigError
from tcx.io import atomic_dir
from tcx.runs.formats import format_named
from tcx.runs.open import open_runs


def export(paths: list[str | Path], format: str, out: str | Path, model: str | dict | None = None,
           replace: bool = False) -> list[Path]:
    """Write every dictionary under `paths` to `out` in `format`; returns the files written."""
    fmt = format_named(format)
    opened = open_runs(paths, model=model)
    out = Path(out)
    check_out(out, [*map(Path, paths), *(d.source for d in opened.dictionaries)], replace)
    with atomic_dir(out, replace) as tmp:
        fmt.write(opened, tmp)
        written = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
    return [out / p for p in written]


WORK = ("checkpoints", ".hydra", "sweep.json", "multirun.yaml")
"""What a training run or a sweep leaves in its folder: --force never replaces such a folder."""


def check_out(out: Path, sources: list[Path], replace: bool) -> None:
    """`out` may not hold, or lie inside, what is exported (replacing it would delete the source), nor
    be a training run or sweep (which --force would delete)."""
    where = out.resolve()
    for source in sources:
        source = source.resolve()
        if where == source or where in source.parents or source in where.parents:
            raise ConfigError(f"--out {out} {'is' if where == source else 'overlaps'} {source}, which is being "
                              "exported: writing there could delete or mix with it. Choose a folder outside "
                              "the runs you export; nothing was written.")
    if replace and where.is_dir() and (held := [w for w in WORK if (where / w).exists()]):
        raise ConfigError(f"--out {out} holds a training run or sweep ({', '.join(held)}), not an earlier "
                          "export: --force will not delete it. Choose another folder; nothing was written.")
