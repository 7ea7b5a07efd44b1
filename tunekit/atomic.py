"""Atomic writes: write to a temporary name beside the target, fsync, rename.

A run can be killed at any moment; readers then see either the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def is_there(path: Path, test: str = "is_file") -> bool:
    """`path.is_file()` (or `exists`, `is_dir`), False for a name the file system cannot even look up
    (longer than it takes): a user's path that is not there, not a crash."""
    try:
        return getattr(path, test)()
    except (OSError, ValueError):
        return False


def free_bytes(folder: str | Path) -> int:
    """Free bytes (for this user) on the disk that holds `folder`, or would hold it once made."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_space(folder: str | Path, need: int, what: str, hint: str = "") -> None:
    """Refuse a write of about `need` bytes into `folder` before it starts, not half-way through.

    The estimate leaves 5% and 64 MB of the disk's free space untouched: the file system's own
    blocks, and the other writes of a running job (metrics, logs)."""
    free = free_bytes(folder)
    if need * 1.05 + 64 * 2**20 > free:
        from tunekit.errors import DiskFull

        raise DiskFull(f"{what} needs about {need / 2**20:,.0f} MB, and the disk holding {folder} has "
                       f"{free / 2**20:,.0f} MB free; free some space{hint} and rerun")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable(folder: str | Path) -> None:
    """Give every file in `folder` the mode a new file gets under the umask (0644 usually).

    safetensors writes through a private temporary file (0600); an exported model is meant to be
    copied, mounted into a container and served by another user."""
    for f in Path(folder).rglob("*"):
        if f.is_file():
            os.chmod(f, 0o666 & ~_umask())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with open_write(path, binary=True) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line, streaming; returns the number of rows."""
    n = 0
    with open_write(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


@contextlib.contextmanager
def temp_path(final: str | Path) -> Iterator[Path]:
    """A temporary name beside `final` that replaces it, fsynced, only if the block succeeds;
    for writers that open their output by name (GGUFWriter)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    # mkstemp creates files readable by the owner only; give the usual permissions.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(final.parent)


@contextlib.contextmanager
def open_write(path: str | Path, binary: bool = False) -> Iterator:
    """A file handle for streaming writes; the file appears at `path` only if the block succeeds."""
    with temp_path(path) as tmp, open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
        yield f


@contextlib.contextmanager
def directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` only if the block succeeds.

    An existing `final` is replaced only after the new one is complete, so an
    interrupted write leaves the previous version (or nothing) behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
