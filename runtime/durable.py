"""Writes that survive a crash or a power cut: a reader sees the old file or the new one, never half.

The one recipe every durable file of the project follows (client state, the bundle's manifest and
programs): write a temp file, fsync it, rename it over the target, fsync the folder so the rename
itself is on disk. The server's blobs are appended to a log instead (`fedserver/blob_log.py`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data`: temp → fsync → rename → fsync the folder; the temp goes on failure.

    mode: the new file's permissions (before the umask).
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
