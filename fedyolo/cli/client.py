"""`fedyolo client` and `fedyolo status`: a federation client on this CPU, and a server's state as a table."""

from __future__ import annotations

import os
from pathlib import Path

from fedyolo.runtime.bundle import Bundle
from fedyolo.runtime.client import FederationClient, Progress, RoundResult
from fedyolo.runtime.errors import FedyoloError
from fedyolo.runtime.http_transport import Connection, RetryPolicy
from fedyolo.runtime.local import load_arrays
from fedyolo.runtime.ort_trainer import OrtTrainer


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
) -> list[RoundResult]:
    """`fedyolo client URL --task T --data FILE`: register once, fetch the bundle once, train rounds.

    threads: ONNX Runtime threads of the task's trainer; 0, one per core.
    """
    from rich.console import Console

    def trainer_factory(bundle: Bundle, task_id: str) -> OrtTrainer:
        return OrtTrainer(bundle, task_id, threads=threads)

    console = Console(stderr=True)
    shown: dict[str, float] = {}

    def show(p: Progress) -> None:
        if p.stage in ("download", "train"):  # throttle: a line per 10 % of the work
            step = int(10 * p.done / p.total) if p.total else 0
            if shown.get(p.stage + p.detail.split()[0]) == step:
                return
            shown[p.stage + p.detail.split()[0]] = step
            console.log(f"{p.stage} {p.detail}: {100 * p.done / max(p.total, 1):.0f} %")
        else:
            console.log(f"{p.stage} {p.task_id} round {p.round}: {p.detail}")

    with FederationClient(url, name=name, state_dir=state_dir, verify=verify, on_progress=show) as client:
        if not client.registered:
            if not enroll_key:
                raise FedyoloError("this client is not registered yet: pass the server's --enroll-key once")
            console.log(
                f"registered as client {client.register(enroll_key)}; token kept in {client.state.root}"
            )
        bundle = client.sync_bundle(cache_dir, tasks=[task])
        data = load_arrays(bundle, task, Path(data_path))
        results = client.run(task, trainer_factory, data, rounds=rounds, bundle=bundle)
    accepted = [r for r in results if r.outcome == "accepted"]
    console.log(f"{len(accepted)} updates accepted for task {task!r}")
    return results
