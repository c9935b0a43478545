"""Atomic writes: a file either has its old content or its complete new content, never half.

Every output of tcx (configs, metrics, dictionaries, checkpoints, caches) is written to a temp file
in the destination folder and moved into place with `os.replace`, which is atomic on POSIX. A run
killed mid-write therefore never leaves a truncated file for the next run to trip on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tcx.errors import ConfigError, NotWritableError, OutOfSpaceError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota, file-size limit


def _out_of_space(e: BaseException, folder: Path) -> bool:
    """ENOSPC/EDQUOT/EFBIG anywhere in the exception's chain (torch's zip writer re-raises a file's
    OSError as "unexpected pos"; safetensors' Rust error carries the errno in its text only), or torch's
    "unexpected pos" while the disk is full (its own writer drops the errno)."""
    chain, seen = [], e
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(getattr(c, "errno", None) in _FULL or any(f"(os error {n})" in str(c) for n in _FULL) for c in chain):
        return True
    try:
        return "unexpected pos" in str(e) and shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_UMASK = _umask()


def _mode_of(path: Path, default: int) -> int:
    """The permissions a plain `open(path, "w")` (or `mkdir`) would leave: an existing file's own,
    else `default` under the umask. (mkstemp's owner-only 0600 would make a shared cache_dir or an
    export unreadable to the colleagues it is for.)"""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default & ~_UMASK


_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[None]:
    """A folder tcx may not write is named in one paragraph (it was an OSError traceback)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NOT_WRITABLE:
            raise
        raise NotWritableError(f"cannot write {path}: {e.strerror}. Nothing was written there; choose a "
                               "folder you can write (out_dir=, --out, hydra.run.dir=), or fix its "
                               "permissions.") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    mode = _mode_of(path, 0o666)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # after the writer: safetensors' save_file makes its own file, owner-only
        os.replace(tmp, path)
    except BaseException as e:
        full = isinstance(e, Exception) and _out_of_space(e, path.parent)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            reason = e if isinstance(e, OSError) else "no space left on device"
            raise OutOfSpaceError(
                f"cannot write {path}: {reason}. The half-written temp file was removed and {path.name} keeps "
                f"its previous content{'' if path.exists() else ' (it had none)'}; nothing else was lost. "
                "Free some space (or raise the quota) and run the same command again: a training run "
                "resumes from its last complete checkpoint.") from e
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def save_tensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file, written atomically with the permissions a plain write would leave."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it becomes `path` (an existing `path`
    is replaced only with `replace`), on failure it is removed and `path` is untouched."""
    path = Path(path)
    if path.exists() and not replace and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"{path} already exists and is not empty: choose another output folder, or "
                          "replace it (--force).")
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _mode_of(path, 0o777))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
