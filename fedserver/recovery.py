"""Start-up: bring the server state up to date with the bundle, collect garbage, check the store.

Run once, in one process, before any worker serves (`serve.prepare_state`, or `create_app` when it
serves alone): a worker must not collect a blob another is writing.
"""

from __future__ import annotations

import logging

from fedyolo.fedserver.errors import ServerConfigError
from fedyolo.fedserver.rounds import Rounds, spec_sha256
from fedyolo.runtime.manifest import MODULE_WEIGHTS, TaskSpec
from fedyolo.runtime.wire import decode_module, encode_module

log = logging.getLogger(__name__)


def recover(rounds: Rounds) -> None:
    """Create missing tasks, drop blobs no row names (left by uploads a crash interrupted), and check
    the blobs still needed against their hashes (`check_store`), setting aside updates whose blob is lost.

    Run it in one process before serving: a server worker must not collect a blob another is writing.
    """
    for task in rounds.bundle.manifest.tasks.values():
        ensure_task(rounds, task)
    removed = rounds.store.collect_garbage()
    if removed:
        log.info("removed %d unreferenced blob or temp files left by an interrupted upload", removed)
    for problem in check_store(rounds):
        log.warning("store check: %s", problem)
    with rounds.store.read() as db:
        for row in db.execute(
            "SELECT task_id, round FROM rounds WHERE status = 'aggregating' ORDER BY round"
        ):
            log.info("round %d of task %r was closed but not committed: aggregating it again", row[1], row[0])


def ensure_task(rounds: Rounds, task: TaskSpec) -> None:
    """Create the task's state (module version 0 from the bundle, round 1 open) if it is new; open one
    more round when the server is asked for more rounds than the state has run."""
    spec = spec_sha256(task)
    now = rounds.clock()
    with rounds.store.read() as db:
        row = db.execute("SELECT spec_sha256 FROM tasks WHERE task_id = ?", (task.task_id,)).fetchone()
    if row is not None and row[0] != spec:
        raise ServerConfigError(
            f"task {task.task_id!r} in the bundle has other trainable tensors than the one in "
            f"{rounds.config.state_dir}; serve it with a new --state-dir"
        )
    if row is None:
        raw = rounds.bundle.task_file(task.task_id, MODULE_WEIGHTS).read_bytes()
        body = encode_module(decode_module(raw, task), task)
        spans = rounds.store.blobs.append([body])
        blob = spans[0][0]
        with rounds.store.transaction() as db:
            rounds.store.name_spans(db, spans)
            db.execute("INSERT INTO tasks VALUES (?, ?, ?)", (task.task_id, spec, now))
            db.execute(
                "INSERT INTO module_versions VALUES (?, 0, ?, NULL, NULL, ?)", (task.task_id, blob, now)
            )
            rounds.open_round(db, task.task_id, 1, 0, now)
        return
    with rounds.store.transaction() as db:  # more rounds asked than the last run had: go on
        last = db.execute(
            "SELECT round, status FROM rounds WHERE task_id = ? ORDER BY round DESC LIMIT 1",
            (task.task_id,),
        ).fetchone()
        if last["status"] == "committed" and last["round"] < rounds.config.rounds:
            rounds.open_round(db, task.task_id, last["round"] + 1, last["round"], now)


def check_store(rounds: Rounds) -> list[str]:
    """Check every blob the server still needs against its hash; set aside the updates whose blob is
    lost, and return what was found (for the start-up log). A lost module version cannot be rebuilt:
    the latest one of a task is a ServerConfigError naming the fix."""
    found = []
    with rounds.store.read() as db:
        pending = db.execute(
            "SELECT u.id, u.task_id, u.round, u.blob FROM updates u JOIN rounds r "
            "ON r.task_id = u.task_id AND r.round = u.round WHERE r.status != 'committed' ORDER BY u.id"
        ).fetchall()
        versions = db.execute(
            "SELECT task_id, version, blob, state_blob, version = (SELECT MAX(version) FROM module_versions "
            "m WHERE m.task_id = v.task_id) AS latest FROM module_versions v ORDER BY task_id, version"
        ).fetchall()
    for row in pending:
        problem = rounds.store.blobs.check(row["blob"])
        if problem is not None:
            rounds.quarantine(row["task_id"], row["round"], row["id"], problem)
            found.append(f"update {row['id']} of task {row['task_id']!r} round {row['round']}: {problem}")
    for row in versions:
        problems = [rounds.store.blobs.check(b) for b in (row["blob"], row["state_blob"]) if b]
        problem = next((p for p in problems if p), None)
        if problem is None:
            continue
        if row["latest"]:
            raise ServerConfigError(
                f"module version {row['version']} of task {row['task_id']!r}, the one its rounds go on "
                f"from, is lost ({problem}); restore {rounds.config.state_dir} from a backup or serve with "
                "a new --state-dir"
            )
        found.append(f"module version {row['version']} of task {row['task_id']!r}: {problem}")
    return found
