"""Corpus specs: where the text comes from. Each yields documents in a fixed order, so the first N
windows of a corpus are the same whatever N is (the token cache and the held-out split rely on it)."""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from tcx.errors import ConfigError, CorpusError


@dataclass(kw_only=True)
class Corpus:
    name: str = MISSING
    holdout: str = "documents"
    """What is held out for evaluation and never trained on: `documents` (one in `holdout_every`,
    by a hash of the text) or `windows` (every `holdout_every`-th window of one stream: tcx's split
    before November 2026, kept so that numbers measured with it reproduce)."""
    holdout_every: int = 20
    """One in this many documents (or windows) is held out (5%)."""

    def __post_init__(self) -> None:
        if self.holdout_every < 2:
            raise ConfigError(f"data.holdout_every must be at least 2, got {self.holdout_every}.")
        if self.holdout not in ("documents", "windows"):
            raise ConfigError(f"data.holdout must be 'documents' or 'windows', got '{self.holdout}'.")

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the text (not the tokenisation) for the token cache."""
        fields = {k: v for k, v in vars(self).items() if k not in ("holdout", "holdout_every")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class PythonDocs(Corpus):
    """Docstrings of the Python standard library, then of installed packages: text every machine
    with Python has, no download needed."""

    site_packages: bool = True
    min_chars: int = 40

    def documents(self) -> Iterator[str]:
        from tcx.data.docstrings import iter_docstrings

        yield from iter_docstrings(self.site_packages, self.min_chars)

    def fingerprint(self) -> str:
        import sys

        return hashlib.sha256(f"{super().fingerprint()}|{sys.version}|{sys.prefix}".encode()
                              ).hexdigest()[:16]


@dataclass(kw_only=True)
class TextFiles(Corpus):
    """Local files by glob: .txt (one document per file), .jsonl and .parquet (`text_field`)."""

    paths: list[str] = field(default_factory=list)
    text_field: str = "text"

    def files(self) -> list[Path]:
        if not self.paths:
            raise CorpusError("data.paths is empty: give one or more globs, e.g. "
                              "data.paths='[/data/*.txt]'.")
        found = sorted({Path(p) for pattern in self.paths for p in glob.glob(pattern, recursive=True)})
        if not found:
            raise CorpusError(f"data.paths {self.paths} matches no file (checked from {Path.cwd()}).")
        bad = [p for p in found if p.suffix not in {".txt", ".jsonl", ".parquet"}]
        if bad:
            raise CorpusError(f"data.paths matched {bad[0]}: only .txt, .jsonl and .parquet are read.")
        return found

    def documents(self) -> Iterator[str]:
        for path in self.files():
            if path.suffix == ".txt":
                yield path.read_text(errors="replace")
            elif path.suffix == ".jsonl":
                yield from self._jsonl(path)
            else:
                yield from self._parquet(path)

    def _jsonl(self, path: Path) -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            i = -1
            try:
                for i, line in enumerate(f):
                    if line.strip():
                        yield self._field(json.loads(line), path, i)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i + 1} is not a JSON object ({e.msg}, column {e.colno}): each line "
                                  "of a .jsonl file is one JSON record. Nothing was written.") from None
            except UnicodeDecodeError:
                raise CorpusError(f"{path} is not UTF-8 text (after line {i + 1}); .jsonl files are read as "
                                  "UTF-8. Nothing was written.") from None

    def _parquet(self, path: Path) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise CorpusError(f"{path} cannot be read as Parquet ({str(e).splitlines()[0]}). Nothing was "
                              "written.") from None
        if self.text_field not in table.column_names:
            raise CorpusError(f"{path} has no column '{self.text_field}' (data.text_field); "
                              f"columns: {table.column_names}.")
        for i, text in enumerate(table.column(self.text_field).to_pylist()):
            yield self._text(text, f"{path} row {i}")

    def _field(self, record: Any, path: Path, line: int) -> str:
        if not isinstance(record, dict) or self.text_field not in record:
            raise CorpusError(f"{path}:{line + 1} has no field '{self.text_field}' (data.text_field).")
        return self._text(record[self.text_field], f"{path}:{line + 1}")

    def _text(self, text: Any, where: str) -> str:
        if not isinstance(text, str):
            raise CorpusError(f"{where}: '{self.text_field}' (data.text_field) is {type(text).__name__}, "
                              "not text. Nothing was written.")
        return text

    def fingerprint(self) -> str:
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files()]
        return hashlib.sha256(f"{super().fingerprint()}|{stats}".encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class HFDataset(Corpus):
    """A Hugging Face dataset by name, streamed (needs a network)."""

    path: str = MISSING
    subset: str | None = None
    split: str = "train"
    text_field: str = "text"

    def documents(self) -> Iterator[str]:
        import datasets

        try:
            stream = datasets.load_dataset(self.path, self.subset, split=self.split, streaming=True)
            for record in stream:
                yield record[self.text_field]
        except (OSError, ConnectionError, ValueError) as e:
            raise CorpusError(f"data={self.name}: cannot stream dataset '{self.path}' "
                              f"({str(e).splitlines()[0]}). Without a network use data=python-docs "
                              "or local files (data=text-files data.paths=...).") from None
