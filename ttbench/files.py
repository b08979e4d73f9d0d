"""Atomic file writes, the one way ttbench writes a file that another process may read: a
temporary file beside the target, flushed to disk, then renamed over it, so a reader (or a job
killed half-way) never sees a half-written file."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, with the permissions a plain open() would give
    (mkstemp's 0600 would hide it from the rest of a cluster group)."""
    atomic_write_all({Path(path): data})


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextmanager
def _flock(lock: Path, on_busy) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock`; when another process holds it, `on_busy(fh)`
    raises or waits for it. The lock dies with its process, so a killed job never leaves it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_busy(fh)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked(directory: Path):
    """Hold an exclusive lock on `directory` (its file .lock) while the block runs; Busy when
    another process holds it."""

    def busy(fh) -> None:
        raise Busy(f"{directory} is being run by another process")

    return _flock(Path(directory) / ".lock", busy)


def waiting(lock: Path, note: Callable[[], None]):
    """Hold an exclusive lock on the file `lock`, waiting for another process that holds it
    (calling `note` first, to say so)."""

    def wait(fh) -> None:
        note()
        fcntl.flock(fh, fcntl.LOCK_EX)

    return _flock(Path(lock), wait)


MANIFEST = "MANIFEST.json"


def atomic_write_all(files: dict[Path, bytes], manifest: Path | None = None) -> None:
    """Write several files, each atomically: every temporary file is written and flushed
    first, and only then are they renamed over their targets. Renaming several files is not
    one step: with `manifest`, a JSON of each file's SHA-256 is written last, so that a
    reader (`stale`) can tell a set left half old, half new by a kill between the renames."""
    done: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            done.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    for tmp, path in done:
        os.replace(tmp, path)
    if manifest is not None:
        digests = {p.name: hashlib.sha256(data).hexdigest() for p, data in files.items()}
        atomic_write(manifest, json.dumps(digests, indent=1).encode())


def manifest_files(manifest: Path) -> list[str] | None:
    """The files a manifest lists (None without a manifest)."""
    return list(json.loads(manifest.read_text())) if manifest.is_file() else None


def stale(manifest: Path) -> list[str]:
    """The files a manifest lists whose content is not the one written with it (or missing)."""
    if not manifest.is_file():
        return []
    wanted = json.loads(manifest.read_text())
    return [
        name
        for name, digest in wanted.items()
        if not (manifest.parent / name).is_file()
        or hashlib.sha256((manifest.parent / name).read_bytes()).hexdigest() != digest
    ]


def atomic_save(path: Path, obj: Any) -> None:
    """torch.save, atomically."""
    import torch  # here: the tables' readers and writers need no torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())
