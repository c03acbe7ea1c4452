"""Durable state: SQLite in WAL mode beside a content-addressed blob directory.

Blobs (update bodies, module versions, strategy states) are named by their sha256 and checked against
it whenever they are read. They are appended to the blob log (`blob_log`: many per fdatasync) and found
through `blob_spans`; state dirs written before 2026-11-30 also hold blobs as files `blobs/ab/abcdef…`,
which are read as before.

Write order, so that a `kill -9` at any instant loses nothing acknowledged and leaves nothing half
done: the blob appended and fdatasync'd → commit the row that names it and the blob's span in one
transaction → answer the client. A blob without a row is garbage (collected at start-up); a row
always names a blob that is on disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from fedyolo.fedserver.blob_log import BlobLog, Span
from fedyolo.fedserver.errors import ServerConfigError
from fedyolo.fedserver.group_commit import GroupCommit, Piece
from fedyolo.fedserver.strategies import StrategyState
from fedyolo.runtime.durable import fsync_dir

SCHEMA_VERSION = 1
DB_NAME = "fedserver.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,          -- sha256 of the token; the token itself is never stored
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    spec_sha256 TEXT NOT NULL,                -- trainable names, shapes, wire dtype
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS module_versions (
    task_id TEXT NOT NULL REFERENCES tasks(task_id),
    version INTEGER NOT NULL,
    blob TEXT NOT NULL,                       -- safetensors of the module, as served
    state_blob TEXT,                          -- strategy state (momentum, moments), safetensors
    round INTEGER,                            -- the round that produced it; NULL for the bundle's module
    created_at REAL NOT NULL,
    PRIMARY KEY (task_id, version)
);
CREATE TABLE IF NOT EXISTS rounds (
    task_id TEXT NOT NULL REFERENCES tasks(task_id),
    round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'aggregating', 'committed')),
    base_version INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    closed_at REAL,
    committed_at REAL,
    metrics TEXT,                             -- example-weighted mean of the clients' metrics, JSON
    PRIMARY KEY (task_id, round)
);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,     -- acceptance order: aggregation sums in this order
    task_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    client_id INTEGER NOT NULL REFERENCES clients(id),
    idempotency_key TEXT NOT NULL,
    blob TEXT NOT NULL,
    body_bytes INTEGER NOT NULL,
    examples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,                   -- the first answer less its update_id (this id): a retry gets it back
    received_at REAL NOT NULL,
    UNIQUE (client_id, idempotency_key),
    UNIQUE (task_id, round, client_id),
    FOREIGN KEY (task_id, round) REFERENCES rounds(task_id, round)
);
CREATE INDEX IF NOT EXISTS updates_round ON updates(task_id, round, id);
CREATE TABLE IF NOT EXISTS blob_spans (       -- where in the blob log an appended blob lies
    sha TEXT PRIMARY KEY,
    segment TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (       -- accepted updates a round's fold set aside, kept to inspect
    id INTEGER PRIMARY KEY,                   -- the update's id when it was accepted
    task_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    client_id INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL,
    blob TEXT NOT NULL,
    body_bytes INTEGER NOT NULL,
    examples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    received_at REAL NOT NULL,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""
# Every blob a row names (NULL state blobs left out: `NOT IN` a list holding NULL matches nothing).
REFERENCED_BLOBS = (
    "SELECT blob FROM updates UNION SELECT blob FROM quarantine UNION SELECT blob FROM module_versions "
    "UNION SELECT state_blob FROM module_versions WHERE state_blob IS NOT NULL"
)
UPDATE_COLUMNS = (
    "id, task_id, round, client_id, idempotency_key, blob, body_bytes, examples, metrics, status_code, "
    "response, received_at"
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobError(OSError):
    """A blob that is missing or does not hash to its name: the disk lost or damaged it."""


@contextmanager
def start_up_errors(state_dir: Path) -> Iterator[None]:
    """Turn what can go wrong opening the state (corrupt database, read-only or full disk, a file where a
    folder should be) into one ServerConfigError naming the cause and the fix, not a traceback."""
    try:
        yield
    except ServerConfigError:
        raise
    except (sqlite3.Error, OSError) as e:
        raise ServerConfigError(_start_up_problem(state_dir, e)) from e


def _start_up_problem(state_dir: Path, e: sqlite3.Error | OSError) -> str:
    db = state_dir / DB_NAME
    where = f"--state-dir {state_dir}"
    text = str(e).lower()
    code = e.errno if isinstance(e, OSError) else None
    full = (
        f"no space left on the disk of {where} ({e}); free some space or serve with a --state-dir elsewhere"
    )
    if code == errno.ENOSPC or "disk is full" in text:
        return full
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in text or "read-only" in text:
        return f"cannot write {where} ({e}); make it writable for this user or serve with another --state-dir"
    if code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return f"a file is in the way in {where} ({e}); move it away or serve with another --state-dir"
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        return (
            f"{db} is not a readable fedserver database ({e}); restore it from a backup, or move it away "
            "and serve with a fresh --state-dir (the updates and module versions in it are then lost)"
        )
    if _nearly_full(state_dir):  # SQLite reports a full disk as a plain "disk I/O error" at times
        return full
    if isinstance(e, sqlite3.OperationalError) and "unable to open" in text:
        return f"cannot open {db} ({e}); check that {where} is a writable folder"
    return f"cannot open the server state in {where} ({type(e).__name__}: {e}); check the disk and the folder"


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system holding `folder` (or its nearest existing parent) has under `margin` bytes."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free < margin
            except OSError:
                return False
    return False


class BlobStore:
    """Immutable blobs named by their sha256: appended to the log (`log`, found by `span_of`), or files
    under `root/ab/abcdef…`."""

    def __init__(self, root: Path, span_of: Callable[[str], Span | None] = lambda sha: None) -> None:
        self.root = root
        self.tmp = root / "tmp"  # temp files of blob files, as written before the log: collected only
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.log = BlobLog(root / "log")
        self.span_of = span_of
        fsync_dir(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def append(self, blobs: list[bytes]) -> list[tuple[str, Span]]:
        """Append `blobs` to the log durably (one write, one fdatasync); (sha256, span) of each, for
        `Store.name_spans` in the transaction of the row that names them."""
        return [
            (sha256_hex(data), span) for data, span in zip(blobs, self.log.append_all(blobs), strict=True)
        ]

    def get(self, sha: str) -> bytes:
        """The blob's bytes, checked against its name; BlobError when it is missing or damaged."""
        span = self.span_of(sha)
        where = self.path(sha) if span is None else self.log.root / span.segment
        try:
            data = self.path(sha).read_bytes() if span is None else self.log.read(span)
        except FileNotFoundError as e:
            raise BlobError(f"blob {sha[:12]} is missing ({where} is gone)") from e
        if span is not None and len(data) < span.length:
            raise BlobError(
                f"blob {sha[:12]} is missing from {where} (it holds {len(data)} of its {span.length} bytes)"
            )
        if sha256_hex(data) != sha:
            raise BlobError(f"blob {sha[:12]} is corrupt on disk ({where})")
        return data

    def check(self, sha: str) -> str | None:
        """Why the blob cannot be read (missing, damaged), or None when it is sound."""
        try:
            self.get(sha)
        except BlobError as e:
            return str(e)
        return None

    def collect(self, keep: set[str], segments: set[str]) -> int:
        """Delete temp files, every blob file not in `keep` and every log segment not in `segments`;
        returns how many files went. Start-up only."""
        removed = 0
        for segment in self.log.segments():
            if segment not in segments:
                self.log.remove(segment)
                removed += 1
        for tmp in self.tmp.iterdir():
            tmp.unlink()
            removed += 1
        for folder in self.root.iterdir():
            if folder in (self.tmp, self.log.root) or not folder.is_dir():
                continue
            for blob in folder.iterdir():
                if blob.name not in keep:
                    blob.unlink()
                    removed += 1
        return removed


T = TypeVar("T")


class Store:
    """The SQLite database: one writer connection under a lock, one reader connection per thread.

    In WAL mode readers see the last committed state and never wait for a writer's fsync, so polling
    clients are not slowed by uploads being committed. Other processes (server workers) may share the
    database: a writer waits up to `BUSY_TIMEOUT_MS` for another's transaction.
    """

    BUSY_TIMEOUT_MS = 30_000

    def __init__(self, state_dir: Path) -> None:
        with start_up_errors(state_dir):
            self._open(state_dir)

    def _open(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self.blobs = BlobStore(state_dir / "blobs", self._span_of)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.group_commit = GroupCommit(self._lock, self._run_batch)
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            self._db.executescript(SCHEMA)
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise ServerConfigError(
                    f"{state_dir} holds fedserver state of schema {row['value']}, this fedyolo uses "
                    f"{SCHEMA_VERSION}; serve with another --state-dir or the fedyolo that wrote it"
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT under the store's lock; rolls back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def grouped(self, work: Callable[[sqlite3.Connection, list[Span]], T], blobs: Sequence[bytes] = ()) -> T:
        """Append `blobs` to the blob log and run `work(db, their spans)` in a transaction, both shared with
        whatever other threads are waiting (`group_commit`): one `pwritev`, one `fdatasync` and one commit
        for them all. Each piece runs in its own SAVEPOINT: an exception undoes that piece only and is
        raised in its own thread. No thread returns before the COMMIT that holds its work is on disk. A log
        write that fails fails the whole batch, with nothing recorded.
        """
        return cast(T, self.group_commit.run(work, blobs))

    def _run_batch(self, batch: list[Piece]) -> None:
        """The blobs of `batch` appended (durable before any row names them), then every piece of it in
        one transaction."""
        db = self._db
        try:
            bodies = [blob for item in batch for blob in item.blobs]
            spans = self.blobs.log.append_all(bodies) if bodies else []
            db.execute("BEGIN IMMEDIATE")
            for item in batch:
                mine, spans = spans[: len(item.blobs)], spans[len(item.blobs) :]
                db.execute("SAVEPOINT work")
                try:
                    item.result = item.work(db, mine)
                    db.execute("RELEASE work")
                except Exception as e:
                    db.execute("ROLLBACK TO work")
                    db.execute("RELEASE work")
                    item.error = e
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for item in batch:  # nothing of the batch is on disk: every piece fails
                item.error = item.error or e
            if not isinstance(e, Exception):
                raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={self.BUSY_TIMEOUT_MS}")
        # FULL: every commit fsyncs the WAL, so an acknowledged update survives power loss, not only kill -9.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """This thread's reader connection (autocommit: every statement sees the last commit)."""
        reader: sqlite3.Connection | None = getattr(self._local, "db", None)
        if reader is None:
            reader = self._connect()
            self._local.db = reader
            with self._readers_lock:  # not the writer's lock: a first read never waits for a commit
                self._readers.append(reader)
        yield reader

    def close(self) -> None:
        with self._lock, self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._db.close()
        self.blobs.log.close()

    def _span_of(self, sha: str) -> Span | None:
        with self.read() as db:
            row = db.execute(
                "SELECT segment, offset, length FROM blob_spans WHERE sha = ?", (sha,)
            ).fetchone()
        return None if row is None else Span(row[0], row[1], row[2])

    @staticmethod
    def name_spans(db: sqlite3.Connection, spans: list[tuple[str, Span]]) -> None:
        """Record where appended blobs lie, in the transaction of the row that names them (the first
        span of a blob appended twice is kept)."""
        db.executemany(
            "INSERT OR IGNORE INTO blob_spans VALUES (?, ?, ?, ?)",
            [(sha, span.segment, span.offset, span.length) for sha, span in spans],
        )

    def collect_garbage(self) -> int:
        """Drop the blobs no row names (spans, files, whole log segments); returns the files removed.
        Start-up only: no other process may be writing."""
        with self.transaction() as db:
            keep = {r[0] for r in db.execute(REFERENCED_BLOBS)}
            db.execute(f"DELETE FROM blob_spans WHERE sha NOT IN ({REFERENCED_BLOBS})")
            segments = {r[0] for r in db.execute("SELECT DISTINCT segment FROM blob_spans")}
        return self.blobs.collect(keep, segments)


def encode_state(state: StrategyState) -> bytes:
    """Strategy state as safetensors: `first/<name>`, `second/<name>`, the step in the metadata."""
    tensors = {f"first/{k}": np.ascontiguousarray(v) for k, v in state.first.items()}
    tensors |= {f"second/{k}": np.ascontiguousarray(v) for k, v in state.second.items()}
    history = json.dumps({"norms": list(state.norms), "claims": list(state.claims)})
    return st_save(tensors, metadata={"step": str(state.step), "history": history})


def decode_state(data: bytes) -> StrategyState:
    """Inverse of `encode_state`."""
    metadata = _state_metadata(data)
    history = json.loads(metadata.get("history", "{}"))
    tensors = st_load(data)
    first = {k.removeprefix("first/"): v for k, v in tensors.items() if k.startswith("first/")}
    second = {k.removeprefix("second/"): v for k, v in tensors.items() if k.startswith("second/")}
    return StrategyState(
        step=int(metadata.get("step", "0")),
        first=first,
        second=second,
        norms=tuple(float(x) for x in history.get("norms", [])),
        claims=tuple(float(x) for x in history.get("claims", [])),
    )


def _state_metadata(data: bytes) -> dict[str, str]:
    # safetensors.numpy.load drops the metadata; it is the JSON header after an 8-byte length.
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__", {}))
