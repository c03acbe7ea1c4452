"""Group commit in the store: pieces (uploads) stored at once share one write, one sync and one commit, a
failing piece fails alone, and each thread hears of its own piece as soon as that piece is committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedyolo.fedserver.store import Store

WAIT_S = 10.0  # far longer than any step here takes; only a hang reaches it


def insert(
    key: str, gate: threading.Event | None = None, started: threading.Event | None = None
) -> Callable[[Any, list[Any]], str]:
    """A piece of work that records `key` (first saying it `started` and waiting for `gate`: its batch is
    held open meanwhile)."""

    def work(db: Any, spans: list[Any]) -> str:
        if started is not None:
            started.set()
        if gate is not None:
            assert gate.wait(WAIT_S)
        db.execute("INSERT INTO meta VALUES (?, ?)", (key, str(spans[0].length)))
        return key

    return work


def stored(store: Store) -> set[str]:
    with store.read() as db:
        return {row[0] for row in db.execute("SELECT key FROM meta WHERE key LIKE 'piece-%'")}


def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_committed_piece_returns_while_the_next_batch_is_still_committing(tmp_path: Path) -> None:
    # Prepare: batch 1 (L) is held open while X and Z queue; X leads batch 2 {X, Z}, which waits until Y
    # has queued; Y then leads batch 3 and holds it open
    store = Store(tmp_path / "state")
    gate_1, gate_3, l_started = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, str] = {}

    def run(key: str, work: Callable[[Any, list[Any]], str]) -> threading.Thread:
        def target() -> None:
            results[key] = store.grouped(work, [key.encode()])

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    def x_work(db: Any, spans: list[Any]) -> str:
        until(lambda: store.group_commit.queued == 1)  # Y has queued behind this batch
        return insert("piece-x")(db, spans)

    # Execute
    lead = run("piece-l", insert("piece-l", gate_1, l_started))
    assert l_started.wait(WAIT_S)
    x = run("piece-x", x_work)
    until(lambda: store.group_commit.queued == 1)
    z = run("piece-z", insert("piece-z"))
    until(lambda: store.group_commit.queued == 2)
    gate_1.set()
    lead.join(WAIT_S)
    until(lambda: store.group_commit.queued == 0)  # X took {X, Z}
    y = run("piece-y", insert("piece-y", gate_3))
    # Assert: Z, committed in batch 2, has its answer although batch 3 (Y's) is still open
    z.join(WAIT_S)
    x.join(WAIT_S)
    assert not z.is_alive() and results["piece-z"] == "piece-z"
    assert y.is_alive() and "piece-y" not in results
    assert stored(store) == {"piece-l", "piece-x", "piece-z"}
    gate_3.set()
    y.join(WAIT_S)
    assert stored(store) == {"piece-l", "piece-x", "piece-y", "piece-z"}
    store.close()


def test_pieces_stored_at_once_share_syncs_and_a_failing_piece_fails_alone(
    tmp_path: Path, counted_syncs: list[int]
) -> None:
    # Prepare: 24 threads store a piece each at the same moment; every third piece's work raises; the
    # first fdatasync is slow, so the others queue
    store = Store(tmp_path / "state")
    start = threading.Barrier(24)
    outcome: dict[int, str] = {}

    def piece(i: int) -> None:
        def work(db: Any, spans: list[Any]) -> str:
            if i % 3 == 0:
                raise ValueError(f"piece {i} is refused")
            return insert(f"piece-{i}")(db, spans)

        start.wait()
        try:
            outcome[i] = store.grouped(work, [bytes([i]) * 1000])
        except ValueError as e:
            outcome[i] = str(e)

    # Execute
    threads = [threading.Thread(target=piece, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    # Assert: every thread returned with its own outcome; only the refused pieces are missing; the 24
    # pieces needed far fewer syncs than 24
    assert not any(t.is_alive() for t in threads)
    assert outcome == {i: f"piece {i} is refused" if i % 3 == 0 else f"piece-{i}" for i in range(24)}
    assert stored(store) == {f"piece-{i}" for i in range(24) if i % 3}
    assert len(counted_syncs) <= 6
    assert not store.group_commit.leading and store.group_commit.queued == 0
    store.close()
