"""The blob log: update bodies appended many to one fdatasync, each read back whole and checked."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from fedyolo.fedserver import blob_log
from fedyolo.fedserver.blob_log import BlobLog, Span


def test_bodies_stored_at_once_share_one_fdatasync_and_read_back_whole(
    tmp_path: Path, counted_syncs: list[int]
) -> None:
    # Prepare: 16 threads store a 320 KB body each at the same moment; the fdatasyncs are counted and the
    # first is slow
    log = BlobLog(tmp_path / "log")
    bodies = [bytes([i]) * 320_000 for i in range(16)]
    spans: list[Span | None] = [None] * 16
    start = threading.Barrier(16)

    def store(i: int) -> None:
        start.wait()
        spans[i] = log.append(bodies[i])

    # Execute
    threads = [threading.Thread(target=store, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Assert: every body reads back from its span, and fewer syncs than bodies were needed
    assert [log.read(span) for span in spans if span is not None] == bodies
    assert len(counted_syncs) <= 3
    assert len(log.segments()) == 1
    assert os.path.getsize(log.root / log.segments()[0]) == 16 * 320_000
    log.close()


def test_a_failed_write_loses_nothing_stored_and_the_next_body_takes_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one body stored; the disk then fails one fdatasync (as a full or failing disk does)
    log = BlobLog(tmp_path / "log")
    first = log.append(b"a" * 1000)
    real_sync = os.fdatasync
    failures = [OSError(28, "No space left on device")]

    def failing(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_sync(fd)

    monkeypatch.setattr(blob_log.os, "fdatasync", failing)
    # Execute
    with pytest.raises(OSError, match="No space left"):
        log.append(b"b" * 1000)
    third = log.append(b"c" * 500)
    # Assert: the first body is intact and the next one was written where the failed one had been
    assert log.read(first) == b"a" * 1000
    assert third.offset == 1000 and log.read(third) == b"c" * 500
    log.close()


def test_two_processes_append_to_segments_of_their_own(tmp_path: Path) -> None:
    # Prepare: two logs on one folder, as two server workers have
    a, b = BlobLog(tmp_path / "log"), BlobLog(tmp_path / "log")
    # Execute
    spans = [(log, log.append(bytes([i]) * 100), bytes([i]) * 100) for i in range(6) for log in (a, b)]
    # Assert
    assert len(a.segments()) == 2
    assert all(log.read(span) == body for log, span, body in spans)
    assert {span.segment for log, span, _ in spans if log is a}.isdisjoint(
        {span.segment for log, span, _ in spans if log is b}
    )
    a.close()
    b.close()


def test_a_short_write_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: pwritev writes at most 1000 bytes a call, as a signal or a pipe-like device may do
    real = os.pwritev

    def short(fd: int, buffers: Any, offset: int) -> int:
        first = bytes(buffers[0])[:1000]
        return real(fd, [first], offset)

    monkeypatch.setattr(blob_log.os, "pwritev", short)
    log = BlobLog(tmp_path / "log")
    # Execute
    span = log.append(b"x" * 2500 + b"y" * 10)
    # Assert
    assert log.read(span) == b"x" * 2500 + b"y" * 10
    log.close()


def test_without_pwritev_and_fdatasync_as_on_macos_the_log_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a platform whose os module has neither (macOS has no fdatasync; older Pythons no pwritev)
    monkeypatch.delattr(blob_log.os, "pwritev")
    monkeypatch.delattr(blob_log.os, "fdatasync")
    log = BlobLog(tmp_path / "log")
    # Execute
    spans = log.append_all([b"a" * 70_000, b"b" * 5, b"c" * 3])
    # Assert
    assert [log.read(span) for span in spans] == [b"a" * 70_000, b"b" * 5, b"c" * 3]
    log.close()
