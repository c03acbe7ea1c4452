"""`fedyolo client` and `fedyolo status`: a federation client on this CPU, and a server's state as a table.

`fedyolo client --events FILE` also appends what the client does to FILE as JSON lines, for whoever
supervises it (the demo reads them): the schema is in `fedyolo.runtime.events`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedyolo.runtime.backends import check_backend, make_trainer
from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient, RoundResult
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.events import ClientEvent, JsonLinesWriter
from fedyolo.runtime.http_transport import Connection, RetryPolicy
from fedyolo.runtime.local import load_arrays
from fedyolo.runtime.trainer import Trainer


def status_command(url: str, verify: bool | str | os.PathLike[str] = True) -> None:
    """`fedyolo status URL`: a table of rounds, clients, accuracy and bytes per task."""
    from rich.console import Console
    from rich.table import Table

    conn = Connection(url, verify=verify, retry=RetryPolicy(attempts=3, base_s=0.5))
    try:
        status = conn.json("GET", "/v1/status")
    finally:
        conn.close()
    table = Table(title=f"{url}: {status['clients_registered']} clients registered")
    for column in (
        "task",
        "round",
        "status",
        "rounds done",
        "updates",
        "clients",
        "accuracy",
        "loss",
        "received",
    ):
        table.add_column(column, justify="left" if column in ("task", "status") else "right")
    for t in status["tasks"]:
        table.add_row(
            t["task_id"],
            f"{t['round']}/{t['rounds_total']}",
            f"{t['status']} ({t['updates']}/{t['min_clients']})" if t["status"] == "open" else t["status"],
            str(t["rounds_committed"]),
            str(t["updates_total"]) + (f" ({t['quarantined']} set aside)" if t.get("quarantined") else ""),
            str(t["clients"]),
            "-" if t["accuracy"] is None else f"{t['accuracy']:.3f}",
            "-" if t["loss"] is None else f"{t['loss']:.4f}",
            f"{t['bytes_received'] / 1e6:.1f} MB",
        )
    Console().print(table)


def client_command(
    url: str,
    task: str,
    data_path: str | os.PathLike[str],
    enroll_key: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    threads: int = 0,
    rounds: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    name: str = "default",
    verify: bool | str | os.PathLike[str] = True,
    events: str | os.PathLike[str] | None = None,
    backend: str = "ort",
) -> list[RoundResult]:
    """`fedyolo client URL --task T --data FILE`: register once, fetch the bundle once, train rounds.

    threads: ONNX Runtime threads of the task's trainer; 0, one per core. `events`: a file to append the
    client's events to as JSON lines (`fedyolo.runtime.events`); downloads and training at most one a
    percent.
    """
    from rich.console import Console

    check_backend(backend)

    def trainer_factory(bundle: Bundle, task_id: str) -> Trainer:
        return make_trainer(bundle, task_id, backend, threads=threads)

    console = Console(stderr=True)
    shown: dict[str, int] = {}
    written: dict[str, int] = {}
    sink = JsonLinesWriter(events) if events is not None else None

    def show(e: ClientEvent) -> None:
        if sink is not None and not _repeats(e, written, 100):  # the events file: a line per percent
            sink.write(e.to_json())
        if _repeats(e, shown, 10):  # the log: a line per 10 % of a download or a round's training
            return
        if e.stage in ("download", "train"):
            console.log(f"{e.stage} {e.detail}: {100 * e.done / max(e.total, 1):.0f} %")
        else:
            console.log(f"{e.stage} {e.task_id} round {e.round}: {e.detail}")

    try:
        with FederationClient(url, name=name, state_dir=state_dir, verify=verify, on_event=show) as client:
            if not client.registered:
                if not enroll_key:
                    raise FedyoloError(
                        "this client is not registered yet: pass the server's --enroll-key once"
                    )
                client_id = client.register(enroll_key)
                show(ClientEvent("register", task, 0, f"registered as client {client_id}"))
                console.log(f"token kept in {client.state.root}")
            bundle = client.sync_bundle(cache_dir, tasks=[task])
            data = load_arrays(bundle, task, Path(data_path))
            results = client.run(task, trainer_factory, data, rounds=rounds, bundle=bundle)
    except Exception as e:
        show(ClientEvent("failed", task, 0, f"{type(e).__name__}: {e}"))
        raise
    finally:
        if sink is not None:
            sink.close()
    accepted = [r for r in results if r.outcome == "accepted"]
    console.log(f"{len(accepted)} updates accepted for task {task!r}")
    return results


def _repeats(e: ClientEvent, seen: dict[str, int], steps: int) -> bool:
    """Whether `e` is in the same one of `steps` steps of its download or training as the last one shown."""
    if e.stage not in ("download", "train") or not e.total:
        return False
    key, step = e.stage + e.detail.split()[0], int(steps * e.done / e.total)
    if seen.get(key) == step:
        return True
    seen[key] = step
    return False
