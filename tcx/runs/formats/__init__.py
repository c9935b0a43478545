"""Dictionary formats tcx reads and writes: its own, and those of the tools researchers use beside it."""

from tcx.runs.formats.base import Format
from tcx.runs.formats.circuit_tracer import CircuitTracer
from tcx.runs.formats.native import Native
from tcx.runs.formats.paper import Paper
from tcx.runs.formats.saelens import SAELens
from tcx.runs.formats.sparsify import Sparsify

FORMATS: tuple[Format, ...] = (Native(), SAELens(), Sparsify(), CircuitTracer(), Paper())
"""Tried in order on each folder or file; the first that recognises it reads it."""


def known_formats() -> str:
    return "; ".join(f"{f.name} ({f.description})" for f in FORMATS)


def format_named(name: str) -> Format:
    from tcx.errors import ConfigError

    for f in FORMATS:
        if f.name == name:
            return f
    raise ConfigError(f"format={name} is unknown; tcx knows {[f.name for f in FORMATS]}.")


__all__ = ["FORMATS", "Format", "format_named", "known_formats"]
