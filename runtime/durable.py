"""Writes that survive a crash or a power cut: a reader sees the old file or the new one, never half.

The one recipe every durable file of the project follows (client state, server blobs, the bundle's
manifest): write a temp file, fsync it, rename it over the target, fsync the folder so the rename
itself is on disk.
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


def write_atomic(path: Path, data: bytes, mode: int = 0o600, tmp_dir: Path | None = None) -> None:
    """Replace `path` with `data`: temp → fsync → rename → fsync the folder; the temp goes on failure.

    mode: the new file's permissions (before the umask). tmp_dir: where the temp file is written (on
    the same file system as `path`); by default beside it.
    """
    write_atomic_all({path: data}, mode, tmp_dir)


def write_atomic_all(files: dict[Path, bytes], mode: int = 0o600, tmp_dir: Path | None = None) -> None:
    """`write_atomic` for several files at once, each step done for all before the next: every temp is
    written before the first fsync and every rename made before the first folder's fsync, so the file
    system's journal carries them together (on ext4 the later fsyncs of a step find their work done)."""
    temps = {path: (tmp_dir or path.parent) / f".{path.name}.{uuid.uuid4().hex}.tmp" for path in files}
    try:
        handles = []
        try:
            for path, data in files.items():
                f = os.fdopen(os.open(temps[path], os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb")
                handles.append(f)
                f.write(data)
                f.flush()
            for f in handles:
                os.fsync(f.fileno())
        finally:
            for f in handles:
                f.close()
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(path.parent for path in files):
        fsync_dir(folder)
