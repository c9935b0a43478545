"""Reading W&B's offline run log (`run-<id>.wandb`) without a server: wandb ships no reader.

The file is a 7-byte header (`:W&B`, magic 0xBEE1, version) followed by LevelDB-style 32 KiB
blocks of records, each `<crc32c u32, length u16, type u8>` + payload (type 1 whole, 2 first,
3 middle, 4 last piece); a block tail shorter than a record header is padding. Each payload is a
`wandb_internal_pb2.Record`: we read its config, history rows and summary.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK, HEADER = 32 * 1024, 7


@dataclass
class WandbRun:
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run log (no :W&B header)")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # padding at a block's end
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        piece, pos = data[pos + HEADER: pos + HEADER + length], pos + HEADER + length
        if kind == 1:
            yield piece
        elif kind == 2:
            pending = piece
        elif kind == 3:
            pending += piece
        elif kind == 4:
            yield pending + piece
        else:  # zeroed tail of a file still being written
            return


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_wandb(path: str | Path) -> WandbRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun()
    for payload in payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            run.config.update({_key(i): _value(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): _value(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): _value(i.value_json) for i in record.summary.update})
    return run


def find_log(run_dir: Path) -> Path | None:
    logs = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))
    return logs[-1] if logs else None
